#!/usr/bin/env python3
"""Generate a synthetic Windows x64 guest (QEMU ELF dump + ground truth JSON) for tests and benchmarks.

Example: scripts/make_guest.py --build 19041 --cpus 4 --ram-mib 4096 --seed 7 --crashed \
             --out /tmp/guest.elf --truth /tmp/guest.json
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "testkit")]  # run from a checkout without scripts/install.sh too

from wincrash_testkit.synth.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run())
