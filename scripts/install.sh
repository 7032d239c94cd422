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

# Every runbook types a bare `wincrash`: as root, put it on PATH; otherwise say how.
here="$(pwd)"
if [[ $(id -u) -eq 0 && -d /usr/local/bin ]]; then
    if [[ ! -e /usr/local/bin/wincrash || -L /usr/local/bin/wincrash ]]; then
        ln -sfn "$here/.venv/bin/wincrash" /usr/local/bin/wincrash
        echo "wincrash installed: /usr/local/bin/wincrash -> $here/.venv/bin/wincrash"
    else
        echo "/usr/local/bin/wincrash exists and is not a link: left alone; run $here/.venv/bin/wincrash"
    fi
else
    echo "wincrash installed in $here/.venv: run '. $here/.venv/bin/activate' (then 'wincrash'), or call $here/.venv/bin/wincrash"
fi
