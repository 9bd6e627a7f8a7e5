#!/usr/bin/env bash
# Create (or bring up to date) the virtual environment the contract fuzzing test runs
# Schemathesis from: $KATA_SCHEMATHESIS_VENV, default <repo>/target/schemathesis-venv. It is
# rebuilt only when it does not hold exactly requirements.txt; nothing is written outside it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
venv=${KATA_SCHEMATHESIS_VENV:-$repo/target/schemathesis-venv}
# A copy of the requirements the venv was built from: if it differs, rebuild.
stamp=$venv/kata-requirements.txt

if cmp -s "$here/requirements.txt" "$stamp"; then
    echo "install.sh: $venv is up to date ($("$venv/bin/schemathesis" --version))"
    exit 0
fi
echo "install.sh: installing $here/requirements.txt into $venv" >&2
python3 -m venv "$venv"
PIP_NO_CACHE_DIR=1 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/requirements.txt"
cp "$here/requirements.txt" "$stamp"
"$venv/bin/schemathesis" --version
