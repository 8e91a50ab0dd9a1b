#!/usr/bin/env bash
# Side-by-side cost of observability: runs once per label given, in that order
# (alternate them: plain scraped scraped plain ...), and prints committed/s (and, in
# process, CPU microseconds per committed transaction) for each run.
#   In process (tricommit-load alone):
#   plain    no metrics server, no tracing
#   scraped  --metrics-addr, scraped every second with curl (OpenMetrics)
#   traced   --otlp-endpoint to a loopback sink started here
#   base     $BASE_BIN (for example a build of the commit before the instrumentation)
#   Through a cluster (`tricommit cluster up`, restarted per run with the label's
#   flags; one cluster directory, initialised once, driven by tricommit-load --cluster):
#   cluster-plain    nodes without a metrics server or tracing
#   cluster-scraped  every node with --metrics-addr (cluster up --metrics-base-port),
#                    each scraped every second with curl
#   cluster-traced   every node with --otlp-endpoint to the loopback sink
#   cluster-sampled  the same, tracing one batch in $SAMPLE (--trace-sample-every)
# Environment: BIN (default target/release/tricommit-load), TRICOMMIT (default
# target/release/tricommit), BASE_BIN, DURATION (5), SAMPLE (64), BASE_PORT (22400: the cluster's
# sites take BASE_PORT.., their metrics BASE_PORT+100..).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-$PWD/target/release/tricommit-load}"
TRICOMMIT="${TRICOMMIT:-$PWD/target/release/tricommit}"
DURATION="${DURATION:-5}"
SAMPLE="${SAMPLE:-64}"
BASE_PORT="${BASE_PORT:-22400}"
METRICS_PORT=$((BASE_PORT + 100))
WORK="$(mktemp -d /tmp/tricommit-overhead.XXXXXX)"
SINK_PID=""
UP_PID=""
stop_cluster() {
  if [ -n "$UP_PID" ]; then
    kill -TERM "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
    UP_PID=""
  fi
}
cleanup() {
  stop_cluster
  if [ -n "$SINK_PID" ]; then kill "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
SINK_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
python3 - "$SINK_PORT" <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
SINK_PID=$!
cd "$WORK"

# Starts `cluster up` on $WORK/cluster (initialised on first use) with the flags given.
start_cluster() {
  if [ ! -d "$WORK/cluster" ]; then
    "$TRICOMMIT" cluster init "$WORK/cluster" --base-port "$BASE_PORT" >/dev/null
  fi
  rm -f up.out
  "$TRICOMMIT" cluster up "$WORK/cluster" "$@" >up.out 2>up.err &
  UP_PID=$!
  for _ in $(seq 1 600); do grep -qx ready up.out && return 0; sleep 0.1; done
  cat up.err >&2
  echo "the cluster never got ready" >&2
  exit 1
}

# Curls every node's /metrics every second while process $1 runs.
scrape_nodes_while() {
  local sites
  sites="$(grep -c '^\(replica\|participant\)-[0-9]* = ' "$WORK/cluster/cluster.toml" || true)"
  while kill -0 "$1" 2>/dev/null; do
    for index in $(seq 0 $((sites - 1))); do
      curl -s --max-time 2 -o /dev/null -H 'Accept: application/openmetrics-text' \
        "http://127.0.0.1:$((METRICS_PORT + index))/metrics" || true
    done
    sleep 1
  done
}

for label in "$@"; do
  case "$label" in
    plain) command=("$BIN") ;;
    scraped) command=("$BIN" --metrics-addr 127.0.0.1:0) ;;
    traced) command=("$BIN" --otlp-endpoint "http://127.0.0.1:$SINK_PORT") ;;
    base) command=("${BASE_BIN:?set BASE_BIN}") ;;
    cluster-plain) start_cluster; command=("$BIN" --cluster "$WORK/cluster") ;;
    cluster-scraped)
      start_cluster --metrics-base-port "$METRICS_PORT"
      command=("$BIN" --cluster "$WORK/cluster") ;;
    cluster-traced)
      start_cluster --otlp-endpoint "http://127.0.0.1:$SINK_PORT"
      command=("$BIN" --cluster "$WORK/cluster") ;;
    cluster-sampled)
      start_cluster --otlp-endpoint "http://127.0.0.1:$SINK_PORT" --trace-sample-every "$SAMPLE"
      command=("$BIN" --cluster "$WORK/cluster") ;;
    *) echo "unknown label $label" >&2; exit 2 ;;
  esac
  rm -f run.json
  "${command[@]}" --duration "$DURATION" --json run.json >/dev/null 2>run.err &
  pid=$!
  if [ "$label" = scraped ]; then
    for _ in $(seq 1 600); do grep -q "metrics on" run.err && break; sleep 0.1; done
    addr="$(sed -n 's|^tricommit-load: metrics on http://\(.*\)/metrics$|\1|p' run.err)"
    while kill -0 "$pid" 2>/dev/null; do
      curl -s --max-time 2 -o /dev/null -H 'Accept: application/openmetrics-text' "http://$addr/metrics" || true
      sleep 1
    done
  elif [ "$label" = cluster-scraped ]; then
    scrape_nodes_while "$pid"
  fi
  # A cluster run defers its bank check (it exits 0); any failure still stops here.
  wait "$pid"
  stop_cluster
  python3 -c "import json; d=json.load(open('run.json')); print('$label', round(d['committed_per_s']), 'cpu_us_per_txn', round(d['cpu_percent']/100/max(d['committed_per_s'],1)*1e6, 3))"
done
