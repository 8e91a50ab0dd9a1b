#!/usr/bin/env bash
# Transport checks beyond the README's test command: the wire decoder properties and the
# live-socket fuzz with more cases than `cargo test` runs by default, and a build of the
# MAC benchmark. Needs only the Rust toolchain that .ci/run already uses; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
TRANSPORT_FUZZ_CASES="${TRANSPORT_FUZZ_CASES:-50000}" \
    cargo test --release -p tricommit-engine --test transport_codec
TRANSPORT_LIVE_FUZZ_CASES="${TRANSPORT_LIVE_FUZZ_CASES:-500}" \
    cargo test --release -p tricommit-engine --test transport_wire_fuzz
cargo bench -p tricommit-bench --bench mac --no-run
