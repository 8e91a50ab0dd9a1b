#!/usr/bin/env bash
# The ISO 8583 switch against pyiso8583 (issue 15): builds the release binaries,
# installs pyiso8583 and pytest into a venv under target/, and runs tests/iso8583.
# Idempotent; works on a fresh Debian machine as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt-get update
    apt-get install -y python3 python3-venv
fi

venv=target/iso8583-venv
mkdir -p target
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check pyiso8583 pytest

cargo build --release -p tricommit-tools --bin tricommit-switch --bin tricommit

status=0
export PYTHONDONTWRITEBYTECODE=1
TRICOMMIT_BIN_DIR="$PWD/target/release" timeout 600 \
    "$venv/bin/python" -m pytest -p no:cacheprovider -v tests/iso8583 || status=$?
if [ "$status" -eq 5 ]; then
    echo "iso8583: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
