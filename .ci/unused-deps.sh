#!/usr/bin/env bash
# Fails when a workspace crate declares a [dependencies] entry that none of its Rust
# sources names (issue 13 item 9: `libc` sat unused in bench/). A dependency kept on
# purpose for work in progress is listed in ALLOWED with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

# crate-dir:dependency  -- why it stays although unused today
ALLOWED=(
  "engine:bytes"  # the cluster transport (engine/src/transport) frames with it
)

status=0
for crate in wal engine tools bench; do
  deps=$(awk '/^\[dependencies\]/{on=1; next} /^\[/{on=0} on && /^[A-Za-z0-9_-]+/{split($0, a, /[ .=]/); print a[1]}' "$crate/Cargo.toml")
  for dep in $deps; do
    ident=${dep//-/_}
    if printf '%s\n' "${ALLOWED[@]}" | grep -qx "$crate:$dep"; then
      continue
    fi
    if ! grep -rqE "\b${ident}::|use ${ident}\b|extern crate ${ident}\b" --include='*.rs' "$crate"; then
      echo "unused dependency: $crate/Cargo.toml declares $dep, and no source in $crate/ names it" >&2
      status=1
    fi
  done
done
exit "$status"
