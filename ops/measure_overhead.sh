#!/usr/bin/env bash
# Side-by-side cost of observability: runs tricommit-load once per label given, in
# that order (alternate them: plain scraped scraped plain ...), and prints committed/s
# and CPU microseconds per committed transaction for each run.
#   plain    no metrics server, no tracing
#   scraped  --metrics-addr, scraped every second with curl (OpenMetrics)
#   traced   --otlp-endpoint to a loopback sink started here
#   base     $BASE_BIN (for example a build of the commit before the instrumentation)
# Environment: BIN (default target/release/tricommit-load), BASE_BIN, DURATION (5).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-$PWD/target/release/tricommit-load}"
DURATION="${DURATION:-5}"
WORK="$(mktemp -d /tmp/tricommit-overhead.XXXXXX)"
SINK_PID=""
cleanup() {
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
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
SINK_PID=$!
cd "$WORK"
for label in "$@"; do
  case "$label" in
    plain) command=("$BIN") ;;
    scraped) command=("$BIN" --metrics-addr 127.0.0.1:0) ;;
    traced) command=("$BIN" --otlp-endpoint "http://127.0.0.1:$SINK_PORT") ;;
    base) command=("${BASE_BIN:?set BASE_BIN}") ;;
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
  fi
  wait "$pid"
  python3 -c "import json; d=json.load(open('run.json')); print('$label', round(d['committed_per_s']), 'cpu_us_per_txn', round(d['cpu_percent']/100/d['committed_per_s']*1e6, 3))"
done
