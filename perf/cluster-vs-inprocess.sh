#!/usr/bin/env bash
# Cluster throughput on loopback against the in-process engine, alternately, with the
# same load flags; then open-loop latency at 50,000/s through the cluster. Prints each
# run's summary line; the nodes' counters (bytes on the wire, syncs, batches) go to
# $OUT/up.err when the cluster stops.
#   usage: perf/cluster-vs-inprocess.sh [SECONDS] [ROUNDS]
set -euo pipefail
seconds=${1:-5}
rounds=${2:-2}
bin=target/release
OUT=${OUT:-$(mktemp -d)}
dir=$OUT/cluster
"$bin/tricommit" cluster init "$dir" --base-port "${BASE_PORT:-17400}" >/dev/null
"$bin/tricommit" cluster up "$dir" >"$OUT/up.out" 2>"$OUT/up.err" &
up=$!
trap 'kill -TERM $up 2>/dev/null || true; wait $up 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q '^ready' "$OUT/up.out" && break; sleep 0.2; done
grep -q '^ready' "$OUT/up.out" || { echo "cluster not ready" >&2; exit 1; }
for round in $(seq 1 "$rounds"); do
  "$bin/tricommit-load" --duration "$seconds" --json "$OUT/inproc-$round.json" >/dev/null
  # A live bank check that does not settle exits 1 (see the README); the figures stand.
  "$bin/tricommit-load" --cluster "$dir" --duration "$seconds" --json "$OUT/cluster-$round.json" >/dev/null || true
  for kind in inproc cluster; do
    python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(sys.argv[2], 'committed/s', round(j['committed_per_s']), 'p50', j['latency_us']['p50'], 'p99', j['latency_us']['p99'], 'invariant', j['invariant_ok'])" "$OUT/$kind-$round.json" "$kind-$round"
  done
done
"$bin/tricommit-load" --cluster "$dir" --duration "$seconds" --rate 50000 --json "$OUT/open-loop.json" >/dev/null
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print('cluster open-loop 50000/s: committed/s', round(j['committed_per_s']), 'p50', j['latency_us']['p50'], 'p99', j['latency_us']['p99'])" "$OUT/open-loop.json"
kill -TERM $up; wait $up || true
trap - EXIT
grep 'stopped:' "$OUT/up.err" || true
