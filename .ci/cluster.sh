#!/usr/bin/env bash
# The cluster of issue 10 end to end, as the README shows it: `cluster init`, `cluster
# up` until `ready`, load through the network client (its bank check on the live
# cluster), stop, and `ledger dump --cluster` on the stopped cluster. Loopback only;
# every wait is bounded; the cluster is stopped on every path.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v python3 >/dev/null; then
  apt-get update
  apt-get install -y python3
fi
cargo build --release -p tricommit-tools
bin=target/release
work=$(mktemp -d)
up_pid=
cleanup() {
  if [ -n "$up_pid" ]; then kill -TERM "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# A free block of 7 ports: each is bound once and released.
base=$(python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randint(10000, 32000)  # below the ephemeral range (32768..)
    try:
        socks = []
        for port in range(base, base + 7):
            s = socket.socket(); s.bind(("127.0.0.1", port)); socks.append(s)
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
PY
)
"$bin/tricommit" cluster init "$work/bank" --accounts 1000 --base-port "$base"
sed -i 's/segment_mib = 64/segment_mib = 8/' "$work/bank/cluster.toml"
"$bin/tricommit" cluster up "$work/bank" >"$work/up.out" 2>"$work/up.err" &
up_pid=$!
for _ in $(seq 1 300); do grep -q '^ready' "$work/up.out" && break; sleep 0.2; done
grep -q '^ready' "$work/up.out" || { cat "$work/up.err"; echo "cluster not ready" >&2; exit 1; }
# The load checks the live bank itself (exit 1 on a mismatch); the dump below checks the
# stopped cluster again, from outside.
timeout 120 "$bin/tricommit-load" --cluster "$work/bank" --duration 3 --history "$work/history" | tee "$work/load.out"
grep -q 'every balance equals opening + acknowledged commits' "$work/load.out"
kill -TERM "$up_pid"; wait "$up_pid"; up_pid=
"$bin/tricommit" ledger dump --cluster "$work/bank" >"$work/balances"
python3 - "$work/history" "$work/balances" <<'PY'
import sys, collections
balance = collections.defaultdict(lambda: 1_000_000)
for line in open(sys.argv[1]):
    tid, fl, fa, tl, ta, amount, outcome = line.split()
    if outcome == "committed":
        balance[(fl, fa)] -= int(amount); balance[(tl, ta)] += int(amount)
bad = [line for line in open(sys.argv[2]) if balance[tuple(line.split()[:2])] != int(line.split()[2])]
assert not bad, f"{len(bad)} balances differ from the history: {bad[:3]}"
print("cluster: every balance equals the history's")
PY
