#!/usr/bin/env bash
# Start the Python implementation of the feed API (see README.md beside this file).
#
# The virtual environment lives in $KATA_PYTHON_VENV (default: <repo>/target/python-venv). It is
# created, or brought up to date, when it does not hold exactly requirements.txt; nothing is
# written outside it (no pip cache, no __pycache__ next to app.py).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${KATA_PYTHON_VENV:-$repo/target/python-venv}
# A copy of the requirements the venv was built from: if it differs, rebuild.
stamp=$venv/kata-requirements.txt

if ! cmp -s "$here/requirements.txt" "$stamp"; then
    echo "run.sh: installing requirements into $venv" >&2
    python3 -m venv "$venv"
    PIP_NO_CACHE_DIR=1 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
fi

# `run.sh --install`: prepare the venv only (CI does this before timing anything).
[ "${1:-}" = "--install" ] && exit 0

# exec: the server becomes this process, so SIGTERM and Ctrl-C reach uvicorn, which finishes
# in-flight requests and closes its pools.
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
exec "$venv/bin/python" "$here/app.py"
