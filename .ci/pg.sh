#!/usr/bin/env bash
# PostgreSQL shards (docs/pg.md): installs Debian's postgresql, starts a throwaway server
# on a free loopback port, and runs the PostgreSQL tests against it for real, plus a
# short `compare --pg` smoke run. The server is stopped and its files removed on every
# path. PostgreSQL refuses to run as root: as root, the server runs as `postgres`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    apt-get update
    apt-get install -y postgresql
fi
bin_dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

# Runs a command as the server's owner: `postgres` under root, else ourselves.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
as_owner_text=""
if [ "$(id -u)" = 0 ]; then as_owner_text="runuser -u postgres -- "; fi

work=$(mktemp -d /tmp/tricommit-pg.XXXXXX)
data="$work/data"
log="$work/server.log"
if [ "$(id -u)" = 0 ]; then chown postgres "$work"; fi

stop_server() {
    as_owner "$bin_dir/pg_ctl" -D "$data" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap stop_server EXIT

# A free loopback port: probe from a random start, at most 200 tries.
port=""
start=$((20000 + RANDOM % 30000))
for offset in $(seq 0 199); do
    candidate=$((start + offset))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
        port=$candidate
        break
    fi
done
[ -n "$port" ] || { echo "pg.sh: no free port found" >&2; exit 1; }

as_owner "$bin_dir/initdb" -D "$data" -A trust -U postgres >/dev/null
# max_prepared_transactions: the pg-2pc baseline keeps one prepared transaction per
# client per shard.
as_owner "$bin_dir/pg_ctl" -D "$data" -l "$log" -w -t 60 start \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c max_connections=200 -c max_prepared_transactions=128"

export TRICOMMIT_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
export TRICOMMIT_PG_RESTART="${as_owner_text}$bin_dir/pg_ctl -D $data -l $log -w -t 60 restart -m fast >/dev/null"

timeout 1200 cargo test --release -p tricommit-engine --features pg \
    --test pg_ledger --test pg_bank --test pg_crash --test pg_restart
timeout 600 cargo test --release -p tricommit-tools --test pg_cli

# The comparison harness end to end (a smoke run: the figures are not the point).
for ledger in 0 1 2 3; do
    as_owner "$bin_dir/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c "CREATE DATABASE tc_ci_compare_$ledger" >/dev/null
done
timeout 300 cargo run --release -p tricommit-bench --bin compare -- \
    --pg "postgres://postgres@127.0.0.1:$port/tc_ci_compare_{ledger}" \
    --configs pg-batched,pg-2pc,pg-ceiling,pg-floor --seconds 2 --rounds 1 --dir target
echo "pg.sh: PostgreSQL tests passed"
