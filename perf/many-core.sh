#!/usr/bin/env bash
# Issue 14's many-core measurements in one short run, for a machine lent for a few
# minutes (the `device` tool's 16-core machine): the scaling table (closed loop under
# `taskset` on 2, 4, 8 and 16 cores, the same binary), the open-loop latency table
# (20,000, 100,000 and 300,000/s on every core) and goal 3's protocol comparison.
# Build here, carry the binaries, run this there; summarise with many-core-summary.py.
#
#   cargo build --release -p tricommit-tools --bin tricommit-load --bin compare
#   mkdir -p carry && cp target/release/{tricommit-load,compare} carry/
#   echo /carry/ >> .git/info/exclude
#   # there (the device tool's command, carry ["carry"]; about 4 minutes):
#   perf/many-core.sh carry /tmp/mc; tar -C /tmp -czf "$OUT/mc.tgz" mc
#   # here (the tool brings back only a few files from $OUT, hence the archive):
#   tar -C /tmp -xzf FILES_AT/mc.tgz && python3 perf/many-core-summary.py /tmp/mc
#
# Usage: perf/many-core.sh BIN_DIR OUT_DIR
# Environment: ROUNDS (default 2: every configuration once per round, alternating),
# SECONDS_PER_RUN (default 5), CORES (default "2 4 8 16", those above nproc skipped),
# RATES (default "20000 100000 300000"), DATA_DIR (default a fresh mktemp -d on the
# local disk; never a tmpfs, which would hide the syncs).
set -euo pipefail

bin_dir=${1:?usage: many-core.sh BIN_DIR OUT_DIR}
out_dir=${2:?usage: many-core.sh BIN_DIR OUT_DIR}
rounds=${ROUNDS:-2}
seconds=${SECONDS_PER_RUN:-5}
cores_list=${CORES:-"2 4 8 16"}
rates=${RATES:-"20000 100000 300000"}
load="$bin_dir/tricommit-load"
compare="$bin_dir/compare"
for binary in "$load" "$compare"; do
    [[ -x $binary ]] || { echo "many-core.sh: no executable $binary" >&2; exit 2; }
done
command -v taskset > /dev/null || { echo "many-core.sh: taskset (util-linux) is missing" >&2; exit 2; }
mkdir -p "$out_dir"
if [[ -n ${DATA_DIR:-} ]]; then
    data_root=$DATA_DIR
    made_root=0
    mkdir -p "$data_root"
else
    data_root=$(mktemp -d "${TMPDIR:-/var/tmp}/tricommit-many-core.XXXXXX")
    made_root=1
fi
# Every run's data directory (and a folder the script made) is removed on every path
# out of the script.
trap 'rm -rf "$data_root"/run-*; if ((made_root)); then rmdir "$data_root"; fi' EXIT
trap 'exit 143' TERM INT

cpus=$(nproc)
{
    echo "date_utc $(date -u +%FT%TZ)"
    echo "nproc $cpus"
    grep -m1 'model name' /proc/cpuinfo || true
    grep MemTotal /proc/meminfo || true
    uname -r
    cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || true
    df -h "$data_root" | tail -1
} > "$out_dir/machine.txt"
cat "$out_dir/machine.txt"

# One tricommit-load run: NAME then its arguments. Its JSON and its last lines go to
# OUT_DIR; a failed run is recorded and the script goes on.
run_load() {
    local name=$1
    shift
    local dir="$data_root/run-$name"
    rm -rf "$dir"
    mkdir -p "$dir"
    if "$@" --data-dir "$dir" --json "$out_dir/$name.json" > "$out_dir/$name.log" 2>&1; then
        echo "$(date -u +%T) $name: $(grep -E '^\s+committed/s' "$out_dir/$name.log" | tr -s ' ')"
    else
        echo "$(date -u +%T) $name: FAILED (rc $?), see $name.log"
    fi
    rm -rf "$dir"
}

for round in $(seq 1 "$rounds"); do
    # Scaling: closed loop, the same binary and flags on the first N cores.
    for cores in $cores_list; do
        if ((cores > cpus)); then
            continue
        fi
        run_load "scale-$cores-r$round" taskset -c "0-$((cores - 1))" \
            "$load" --duration "$seconds"
    done
    # Latency: open loop on every core, coordinated omission corrected by the load
    # generator (latency from each transaction's intended send time).
    for rate in $rates; do
        run_load "rate-$rate-r$round" "$load" --duration "$seconds" --rate "$rate"
    done
done

# Goal 3: 3PC against 2PC, the issue's command, on every core.
compare_dir="$data_root/run-compare"
mkdir -p "$compare_dir"
if "$compare" --seconds 3 --rounds 5 --configs overlap,2pc --dir "$compare_dir" \
    --json "$out_dir/compare.json" > "$out_dir/compare.log" 2>&1; then
    tail -8 "$out_dir/compare.log"
else
    echo "compare: FAILED (rc $?), see compare.log"
fi
echo "$(date -u +%T) done"
