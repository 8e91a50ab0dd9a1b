#!/usr/bin/env bash
# Observability checks (issue 12), run by .ci/run after the test suite:
#  1. a scrape of a running in-process engine passes `promtool check metrics`, and its
#     counters equal the run's `--json` summary;
#  2. `promtool check rules` and `promtool test rules` on ops/prometheus;
#  3. the dashboard check (ops/grafana/check_dashboard.py) against that scrape;
#  4. a real Prometheus server on loopback scrapes `tricommit-load --metrics-addr` for a
#     few seconds, evaluates the alert rules, and its HTTP API returns a non-zero
#     commit rate;
#  5. a running cluster (`cluster up --metrics-base-port`): a replica's and a
#     participant's scrape pass `promtool check metrics`, and hold samples of every
#     name the dashboard and the alert rules use (no allow-list but `up`);
#  6. the cargo tests of tools/tests/observability.rs with promtool present (a node's
#     scrape, and one batch as one OTLP trace across the replica and participant
#     processes).
# Idempotent; installs what it needs on a fresh Debian machine (as root). Every child
# is killed on every path, and every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null \
    || ! command -v curl >/dev/null || ! command -v python3 >/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    prometheus curl python3 ca-certificates
fi

cargo build --release -p tricommit-tools --bin tricommit-load --bin tricommit
LOAD="$PWD/target/release/tricommit-load"
TRICOMMIT="$PWD/target/release/tricommit"
WORK="$(mktemp -d /tmp/tricommit-observability.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Waits (bounded) until the load generator in $1's stderr file prints its address.
metrics_address() {
  local log="$1"
  for _ in $(seq 1 600); do
    local addr
    addr="$(sed -n 's|^tricommit-load: metrics on http://\(.*\)/metrics$|\1|p' "$log" | head -n1)"
    if [ -n "$addr" ]; then echo "$addr"; return 0; fi
    sleep 0.1
  done
  echo "tricommit-load never printed its metrics address" >&2
  cat "$log" >&2
  return 1
}

echo "== 1. scrape of a running engine: promtool check metrics, counters vs --json"
mkdir -p "$WORK/run1"
(cd "$WORK/run1" && exec "$LOAD" --duration 3 --accounts 1000 --segment-mib 8 \
  --metrics-addr 127.0.0.1:0 --metrics-linger-s 120 --json "$WORK/summary.json" \
  >"$WORK/load1.out" 2>"$WORK/load1.err") &
PIDS+=($!)
ADDR="$(metrics_address "$WORK/load1.err")"
python3 - "$WORK/summary.json" <<'PY'
import json, sys, time
deadline = time.time() + 120
while True:
    try:
        json.load(open(sys.argv[1]))
        break
    except (OSError, ValueError):
        if time.time() > deadline:
            sys.exit("no JSON summary in time")
        time.sleep(0.2)
PY
curl -fsS --max-time 10 "http://$ADDR/metrics" >"$WORK/scrape.txt"
curl -fsS --max-time 10 -H 'Accept: application/openmetrics-text; version=1.0.0' \
  "http://$ADDR/metrics" >"$WORK/scrape.openmetrics"
tail -n1 "$WORK/scrape.openmetrics" | grep -qx '# EOF'
promtool check metrics <"$WORK/scrape.txt"
python3 - "$WORK/scrape.txt" "$WORK/summary.json" <<'PY'
import json, sys
samples = {}
for line in open(sys.argv[1]):
    if line.startswith("#") or not line.strip():
        continue
    series, value = line.rsplit(" ", 1)
    samples[series] = float(value)
summary = json.load(open(sys.argv[2]))
checks = [
    ('tricommit_transactions_total{outcome="committed"}', summary["committed"]),
    ('tricommit_transactions_total{outcome="aborted"}', summary["aborted"]),
    ("tricommit_batches_total", summary["batches"]),
]
refused = sum(v for k, v in samples.items() if k.startswith("tricommit_admission_rejections_total{"))
checks.append(("sum(tricommit_admission_rejections_total)", summary["busy_rejections"]))
samples["sum(tricommit_admission_rejections_total)"] = refused
bad = [(name, samples.get(name), want) for name, want in checks if samples.get(name) != float(want)]
for name, got, want in bad:
    print(f"{name}: scrape {got}, --json {want}")
if summary["committed"] <= 0:
    sys.exit("the run committed nothing")
sys.exit(1 if bad else 0)
PY
echo "counters agree with --json"

echo "== 2. alert rules"
promtool check rules ops/prometheus/alerts.yml
promtool test rules ops/prometheus/alerts_test.yml

echo "== 3. dashboard"
python3 ops/grafana/check_dashboard.py ops/grafana/tricommit.json "$WORK/scrape.txt" \
  ops/grafana/cluster-only-metrics.txt ops/prometheus/alerts.yml
kill "${PIDS[0]}" 2>/dev/null || true

echo "== 4. a Prometheus server scrapes tricommit-load"
mkdir -p "$WORK/run2"
(cd "$WORK/run2" && exec "$LOAD" --duration 30 --rate 20000 --accounts 1000 --segment-mib 8 \
  --metrics-addr 127.0.0.1:0 >"$WORK/load2.out" 2>"$WORK/load2.err") &
PIDS+=($!)
ADDR="$(metrics_address "$WORK/load2.err")"
PROM_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/ops/prometheus/alerts.yml
scrape_configs:
  - job_name: tricommit
    static_configs:
      - targets: ['$ADDR']
YML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
python3 - "$PROM_PORT" <<'PY'
import json, sys, time, urllib.parse, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/api/v1"
def get(path):
    with urllib.request.urlopen(base + path, timeout=5) as response:
        return json.load(response)["data"]
query = 'sum(rate(tricommit_transactions_total{job="tricommit",outcome="committed"}[5s]))'
deadline = time.time() + 90
rate = 0.0
while time.time() < deadline:
    try:
        result = get("/query?query=" + urllib.parse.quote(query))["result"]
        rate = float(result[0]["value"][1]) if result else 0.0
    except (OSError, ValueError, KeyError):
        rate = 0.0
    if rate > 0:
        break
    time.sleep(1)
if rate <= 0:
    sys.exit("Prometheus never saw a non-zero commit rate")
print(f"Prometheus: committed rate {rate:.0f}/s")
up = get("/query?query=" + urllib.parse.quote('up{job="tricommit"}'))["result"]
assert up and up[0]["value"][1] == "1", f"target not up: {up}"
rules = [rule for group in get("/rules")["groups"] for rule in group["rules"]]
unhealthy = [rule["name"] for rule in rules if rule.get("health") not in ("ok", "unknown")]
assert rules and not unhealthy, f"rules failing to evaluate: {unhealthy}"
print(f"Prometheus: {len(rules)} alert rules load and evaluate")
PY

echo "== 5. a cluster node's scrape: promtool check metrics, dashboard and rules"
BASE="$(python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randrange(22000, 22990)
    try:
        sockets = []
        for port in range(base, base + 8):
            s = socket.socket(); s.bind(("127.0.0.1", port)); sockets.append(s)
        print(base); break
    except OSError:
        continue
    finally:
        for s in sockets: s.close()
PY
)"
"$TRICOMMIT" cluster init "$WORK/cluster" --replicas 2 --participants 2 --accounts 200 \
  --base-port "$BASE" >/dev/null
sed -i 's/segment_mib = 64/segment_mib = 8/' "$WORK/cluster/cluster.toml"
(exec "$TRICOMMIT" cluster up "$WORK/cluster" --metrics-base-port "$((BASE + 4))" \
  >"$WORK/up.out" 2>"$WORK/up.err") &
UP_PID=$!
PIDS+=("$UP_PID")
for _ in $(seq 1 600); do grep -qx ready "$WORK/up.out" && break; sleep 0.1; done
grep -qx ready "$WORK/up.out" || { cat "$WORK/up.err" >&2; echo "the cluster never got ready" >&2; exit 1; }
"$LOAD" --cluster "$WORK/cluster" --duration 2 --clients 1 --window 256 >/dev/null 2>&1
curl -fsS --max-time 10 "http://127.0.0.1:$((BASE + 4))/metrics" >"$WORK/node-replica.txt"
curl -fsS --max-time 10 "http://127.0.0.1:$((BASE + 6))/metrics" >"$WORK/node-participant.txt"
promtool check metrics <"$WORK/node-replica.txt"
promtool check metrics <"$WORK/node-participant.txt"
grep -q '^tricommit_link_up{peer="participant-1"} 1$' "$WORK/node-replica.txt"
for scrape in node-replica node-participant; do
  python3 ops/grafana/check_dashboard.py ops/grafana/tricommit.json "$WORK/$scrape.txt" \
    ops/grafana/node-allow-list.txt ops/prometheus/alerts.yml
done
kill -TERM "$UP_PID"
wait "$UP_PID"

echo "== 6. cargo tests: a node's scrape, one batch as one trace across processes"
cargo test --release -p tricommit-tools --test observability -- --nocapture 2>&1 \
  | tee "$WORK/cargo-observability.txt"
if grep -q SKIPPED "$WORK/cargo-observability.txt"; then
  echo "a check was skipped although promtool is installed" >&2
  exit 1
fi
echo "observability checks passed"
