#!/usr/bin/env bash
# The cost of observability in instructions (valgrind --tool=callgrind), which repeat
# from run to run where wall-clock throughput on a shared machine does not:
#  1. instructions per committed transaction of the in-process engine, for each of
#     MODES (off: no tracing; on: every batch traced to a loopback OTLP sink; sampled:
#     one batch in SAMPLE traced): two runs of tricommit-load each (SHORT and LONG
#     seconds), the difference of
#     total instructions over the difference of committed transactions (start-up,
#     ledger set-up and shutdown cancel out);
#  2. instructions per scrape of the in-process engine: collection only inside the
#     metrics server's thread (`--toggle-collect` on metrics_http::serve), SCRAPES
#     scrapes while the load lingers after its run;
#  3. instructions per scrape of a cluster node: replica-0 of a 7-site cluster under
#     callgrind (the other six native, peer_silent_ms_max raised to its 60 s limit so
#     that valgrind's slowness does not drop links), the same toggle, SCRAPES scrapes.
# Prints one line per figure. Environment: MODES ("off on sampled"), SAMPLE (64),
# SHORT (3), LONG (6), SCRAPES (10),
# BASE_PORT (22600: sites BASE_PORT.., replica-0's metrics BASE_PORT+50).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/target/release"
SHORT="${SHORT:-3}"
LONG="${LONG:-6}"
SCRAPES="${SCRAPES:-10}"
MODES="${MODES:-off on sampled}"
SAMPLE="${SAMPLE:-64}"
BASE_PORT="${BASE_PORT:-22600}"
WORK="$(mktemp -d /tmp/tricommit-callgrind.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
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
PIDS+=($!)

total_ir() { sed -n 's/^summary: \([0-9]*\).*/\1/p' "$1" | head -n1; }
committed() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['committed'])" "$1"; }
# One client with a small window: under valgrind (tens of times slower) the default
# closed loop overloads the engine until votes time out and transactions abort, which
# is not the path being measured.
LOAD_FLAGS=(--accounts 1000 --segment-mib 8 --clients 1 --window 256)
aborted() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['aborted'])" "$1"; }

# 1. Instructions per committed transaction.
for mode in $MODES; do
  case "$mode" in
    off) extra=() ;;
    on) extra=(--otlp-endpoint "http://127.0.0.1:$SINK_PORT") ;;
    sampled) extra=(--otlp-endpoint "http://127.0.0.1:$SINK_PORT" --trace-sample-every "$SAMPLE") ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  for seconds in "$SHORT" "$LONG"; do
    valgrind --tool=callgrind --callgrind-out-file="cg.$mode.$seconds" \
      "$BIN/tricommit-load" "${LOAD_FLAGS[@]}" "${extra[@]}" --duration "$seconds" \
      --json "run.$mode.$seconds.json" >/dev/null 2>"valgrind.$mode.$seconds.err"
  done
  short_ir="$(total_ir "cg.$mode.$SHORT")"; long_ir="$(total_ir "cg.$mode.$LONG")"
  short_c="$(committed "run.$mode.$SHORT.json")"; long_c="$(committed "run.$mode.$LONG.json")"
  python3 -c "import sys; a,b,c,d=map(int,sys.argv[1:5]); print(f'tracing {sys.argv[5]}: {(b-a)/(d-c):,.0f} instructions per committed transaction ({c} and {d} committed, {sys.argv[6]} and {sys.argv[7]} aborted)')" \
    "$short_ir" "$long_ir" "$short_c" "$long_c" "$mode" \
    "$(aborted "run.$mode.$SHORT.json")" "$(aborted "run.$mode.$LONG.json")"
done

# Waits (bounded) until GET $1 answers 200.
wait_ok() {
  for _ in $(seq 1 1200); do curl -fs --max-time 2 -o /dev/null "$1" && return 0; sleep 0.25; done
  echo "no 200 from $1" >&2; exit 1
}

# 2. One scrape of the in-process engine (after its run: the families are full).
valgrind --tool=callgrind --callgrind-out-file=cg.scrape --collect-atstart=no \
  --toggle-collect='*metrics_http::serve*' \
  "$BIN/tricommit-load" "${LOAD_FLAGS[@]}" --duration "$SHORT" --metrics-addr 127.0.0.1:0 \
  --metrics-linger-s 60 --json run.scrape.json >/dev/null 2>load.err &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
for _ in $(seq 1 1200); do [ -s run.scrape.json ] && break; sleep 0.25; done
addr="$(sed -n 's|^tricommit-load: metrics on http://\(.*\)/metrics$|\1|p' load.err)"
for _ in $(seq 1 "$SCRAPES"); do curl -fsS --max-time 30 -o scrape.txt "http://$addr/metrics"; done
# The load exits (and callgrind writes its counts) when the linger ends.
wait "$LOAD_PID"
python3 -c "import sys; print(f'in-process scrape: {int(sys.argv[1])/int(sys.argv[2]):,.0f} instructions each ({sys.argv[3]} bytes, {sys.argv[2]} scrapes)')" \
  "$(total_ir cg.scrape)" "$SCRAPES" "$(wc -c <scrape.txt)"

# 3. One scrape of a cluster node (replica-0 of the default 7-site cluster).
"$BIN/tricommit" cluster init "$WORK/cluster" --base-port "$BASE_PORT" >/dev/null
sed -i 's/segment_mib = 64/segment_mib = 8/; s/peer_silent_ms_max = .*/peer_silent_ms_max = 60000/' \
  "$WORK/cluster/cluster.toml"
for site in replica-1 replica-2 participant-0 participant-1 participant-2 participant-3; do
  "$BIN/tricommit" node --cluster "$WORK/cluster" --site "$site" >/dev/null 2>"$site.err" &
  PIDS+=($!)
done
valgrind --tool=callgrind --callgrind-out-file=cg.node --collect-atstart=no \
  --toggle-collect='*metrics_http::serve*' \
  "$BIN/tricommit" node --cluster "$WORK/cluster" --site replica-0 \
  --metrics-addr "127.0.0.1:$((BASE_PORT + 50))" >/dev/null 2>replica-0.err &
NODE_PID=$!
PIDS+=("$NODE_PID")
wait_ok "http://127.0.0.1:$((BASE_PORT + 50))/healthz"
for _ in $(seq 1 "$SCRAPES"); do
  curl -fsS --max-time 30 -o node-scrape.txt "http://127.0.0.1:$((BASE_PORT + 50))/metrics"
done
kill -TERM "$NODE_PID"; wait "$NODE_PID" || true
python3 -c "import sys; print(f'node scrape (replica-0 of 7 sites): {int(sys.argv[1])/int(sys.argv[2]):,.0f} instructions each ({sys.argv[3]} bytes, {sys.argv[2]} scrapes)')" \
  "$(total_ir cg.node)" "$SCRAPES" "$(wc -c <node-scrape.txt)"
