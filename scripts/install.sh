#!/usr/bin/env bash
# Create .venv (from Debian's python3, with system site-packages so that Debian's python3-guestfs
# is importable: it is not on PyPI) and install wincrash with its test extras into it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]" -e ./testkit
