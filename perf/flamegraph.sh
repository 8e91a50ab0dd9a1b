#!/usr/bin/env bash
# Profiles tricommit-load and renders a flamegraph SVG.
#
#   perf/flamegraph.sh [tricommit-load flags...]
#
# There is no PMU on the VMs this project runs on, so perf samples on the cpu-clock
# software event. Call graphs are unwound from DWARF (the release profile keeps
# debug = 1). The SVG lands in perf/out/flamegraph.svg unless FLAMEGRAPH_SVG says
# otherwise. inferno is installed through cargo when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

out_dir=perf/out
svg=${FLAMEGRAPH_SVG:-$out_dir/flamegraph.svg}
frequency_hz=${PERF_FREQUENCY_HZ:-499}
mkdir -p "$out_dir"

if ! command -v perf >/dev/null 2>&1; then
  echo "perf is missing: install it (Debian: apt-get install linux-perf)" >&2
  exit 2
fi
if ! command -v inferno-flamegraph >/dev/null 2>&1 || ! command -v inferno-collapse-perf >/dev/null 2>&1; then
  echo "installing inferno (cargo install inferno)..." >&2
  cargo install --locked inferno
  export PATH="$HOME/.cargo/bin:$PATH"
fi

cargo build --release -p tricommit-tools --bin tricommit-load
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

# A short default run keeps perf.data (DWARF stacks are large) to a few hundred MB.
if [ "$#" -eq 0 ]; then set -- --duration 5; fi
perf record -e cpu-clock -F "$frequency_hz" -g --call-graph dwarf,16384 \
  -o "$out_dir/perf.data" -- "$target_dir/release/tricommit-load" "$@"
perf script -i "$out_dir/perf.data" 2>/dev/null | inferno-collapse-perf > "$out_dir/stacks.folded"
inferno-flamegraph --title "tricommit-load $*" < "$out_dir/stacks.folded" > "$svg"
echo "flamegraph: $svg"
echo "top frames (self time):"
perf report -i "$out_dir/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' | head -15
