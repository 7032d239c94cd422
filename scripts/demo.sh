#!/usr/bin/env bash
# The README's main job on a shipped sample: generate the embedded sample guest (a synthetic Windows
# 10 2004 x64 guest that crashed with an NMI, written as QEMU's dump-guest-memory ELF), convert it to
# MEMORY.DMP offline without symbols, and print `info` of the result.
set -euo pipefail
cd "$(dirname "$0")/.."
out=out/demo
mkdir -p "$out"
.venv/bin/python scripts/make_guest.py --build 19041 --cpus 2 --ram-mib 512 --seed 2026 --crashed \
    --out "$out/guest.elf" --force >/dev/null
.venv/bin/wincrash convert "$out/guest.elf" -o "$out/MEMORY.DMP" --profile Win10x64 --force
.venv/bin/wincrash info "$out/MEMORY.DMP"
