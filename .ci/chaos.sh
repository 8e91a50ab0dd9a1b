#!/usr/bin/env bash
# Every chaos scenario (issue 11, part 4) on real processes, each on a fresh cluster for
# CHAOS_SECONDS (default 5) of load, each checked exactly by the runner's bank check.
# Loopback only; the runner bounds every wait and kills its nodes on every path (a
# runner that dies takes them along: PR_SET_PDEATHSIG). Prints one summary line per
# scenario and fails on the first scenario that fails. Budget: about 4 minutes.
# CHAOS_JSON_DIR=DIR keeps each scenario's --json figures there (the README's table).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tricommit-tools
bin=target/release
seconds=${CHAOS_SECONDS:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=25000
for scenario in $("$bin/tricommit" chaos --list | awk '{print $1}'); do
  # Ten ports a scenario from 25000..26999; a block still in use is skipped.
  while ss -ltn 2>/dev/null | grep -qE "127\.0\.0\.1:(${port}|$((port + 6))) "; do port=$((port + 10)); done
  timeout 300 "$bin/tricommit" chaos --cluster "$work/$scenario" --scenario "$scenario" \
    --seconds "$seconds" --base-port "$port" --json "$work/$scenario.json"
  if [ -n "${CHAOS_JSON_DIR:-}" ]; then cp "$work/$scenario.json" "$CHAOS_JSON_DIR/"; fi
  port=$((port + 10))
  if [ "$port" -ge 26990 ]; then port=25000; fi
done
