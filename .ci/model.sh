#!/usr/bin/env bash
# The model checks too long for every `cargo test` but small enough for CI: two
# openers of one transaction id with a resending client (about 9 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p tricommit-engine --test model_check -- --ignored --exact \
    e3pc_holds_every_invariant_with_two_openers_and_a_resending_client
