#!/usr/bin/env python3
"""Benchmark `wincrash convert` against `cp` and `cp` + `sync` of the same ELF on the same disk, in one run.

Guests (wincrash_testkit.synth, build 19041, 4 vCPUs), each size in two kinds:
- dense: random data in every 2 MiB block of RAM the generator left free (what `make_guest.py
  --filler-mib` does, but past its half-of-RAM limit), so almost no zero pages;
- half-zero: random data in half of those blocks (chosen at random), the other half zero pages.
Every ELF is written out densely (zeros as real zero bytes, no holes), as `wincrash dump` and QEMU write
it, so neither cp nor convert can skip anything by SEEK_DATA. For each guest the commands run in
alternated rounds (page cache and other jobs' writeback even out); each figure is the best round; the
ratio is cp + sync time / convert time (>= 1: convert is faster than a durable copy). Peak RSS is the
child's (wait4 rusage); disk is the output's allocated blocks. The load average is printed before and
after (the machine is shared). Usage:

    .venv/bin/python scripts/bench_convert.py [--sizes 1024,4096] [--rounds 2] [--dir /tmp/bench]

With --by-input: conversion speed per input kind on one guest (scripts/bench_inputs.py says how each
input is made by the real QEMU, makedumpfile and compressors): MiB/s = guest RAM MiB / wall seconds of
`wincrash convert --format full` (best of --rounds, warm page cache, output fsynced as always).

    .venv/bin/python scripts/bench_convert.py --by-input --sizes 1024 [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from wincrash_testkit.synth.guest import GuestSpec, generate  # noqa: E402
from wincrash_testkit.synth.writers import write_qemu_elf  # noqa: E402

from wincrash.memory.qemu_elf import read_elf_layout  # noqa: E402

BLOCK = 2 << 20


def run(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and stdout of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return elapsed, usage.ru_maxrss, out


def fill(elf: Path, guest, fraction: float) -> int:
    """Write random data into 2 MiB blocks of RAM the generator left empty; returns bytes written."""
    used = {pfn * 0x1000 // BLOCK for pfn in guest.mem.pages}
    rng = random.Random(5)
    noise = os.urandom(BLOCK * 8)
    written = 0
    with open(elf, "r+b") as fh:
        for seg in read_elf_layout(fh, elf.stat().st_size).segments:
            if seg.size < BLOCK:
                continue
            for block in range(seg.paddr // BLOCK, (seg.paddr + seg.size) // BLOCK):
                if block in used or rng.random() >= fraction or block * BLOCK < seg.paddr:
                    continue
                at = seg.offset + block * BLOCK - seg.paddr
                start = rng.randrange(0, 7) * BLOCK
                os.pwrite(fh.fileno(), noise[start:start + BLOCK], at)
                written += BLOCK
    return written


def make_elf(size_mib: int, kind: str, workdir: Path) -> tuple[Path, int]:
    """A dense-on-disk ELF of a generated guest of ``kind`` (dense / half-zero); (path, MiB of random data)."""
    guest = generate(GuestSpec(build=19041, cpus=4, ram_mib=size_mib, seed=size_mib))
    sparse = workdir / f"guest-{size_mib}-{kind}.sparse.elf"
    with open(sparse, "wb") as fh:
        write_qemu_elf(fh, guest)
    data = fill(sparse, guest, 1.0 if kind == "dense" else 0.5)
    elf = workdir / f"guest-{size_mib}-{kind}.elf"
    subprocess.run(["cp", "--sparse=never", str(sparse), str(elf)], check=True)
    sparse.unlink()
    return elf, data >> 20


def bench(size_mib: int, kind: str, rounds: int, workdir: Path) -> dict:
    elf, data_mib = make_elf(size_mib, kind, workdir)
    copy = workdir / "copy.elf"
    commands = {
        "cp": ["cp", str(elf), str(copy)],
        "cp_sync": ["sh", "-c", f"cp '{elf}' '{copy}' && sync '{copy}'"],
        **{fmt: [sys.executable, "-m", "wincrash", "convert", str(elf), "-o", str(copy), "--format", fmt,
                 "--json", "--force"] for fmt in ("full", "bitmap", "kernel")},
    }
    best: dict[str, tuple[float, int, int]] = {}
    run(["sh", "-c", f"cat '{elf}' > /dev/null"])  # warm the page cache, as every command will find it
    for _ in range(rounds):
        for name, cmd in commands.items():
            os.sync()
            seconds, rss, _out = run(cmd)
            disk = copy.stat().st_blocks * 512
            copy.unlink()
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, rss, disk)
    elf.unlink()
    row: dict = {"ram_mib": size_mib, "kind": kind, "data_mib": data_mib}
    for name, (seconds, rss, disk) in best.items():
        row[f"{name}_s"] = round(seconds, 2)
        if name in ("full", "bitmap", "kernel"):
            row[f"{name}_vs_cp_sync"] = round(best["cp_sync"][0] / seconds, 2)
            row[f"{name}_vs_cp"] = round(best["cp"][0] / seconds, 2)
            row[f"{name}_rss_mib"] = round(rss / 1024)
            row[f"{name}_disk_mib"] = round(disk / 2**20)
    return row


def bench_inputs(size_mib: int, rounds: int, workdir: Path) -> list[dict]:
    """One row per input kind: its size, the conversion's seconds, MiB/s of guest RAM and peak RSS."""
    from bench_inputs import make_inputs

    files, random_mib = make_inputs(size_mib, workdir)
    out = workdir / "out.dmp"
    rows = []
    for kind, path in files.items():
        run(["sh", "-c", f"cat '{path}' > /dev/null"])
        best: tuple[float, int] | None = None
        for _ in range(rounds):
            os.sync()
            seconds, rss, _out = run([sys.executable, "-m", "wincrash", "convert", str(path), "-o", str(out),
                                      "--format", "full", "--force", "--json"])
            out.unlink()
            best = (seconds, rss) if best is None or seconds < best[0] else best
        assert best is not None
        rows.append({"input": kind, "ram_mib": size_mib, "random_mib": random_mib,
                     "input_mib": round(path.stat().st_size / 2**20), "seconds": round(best[0], 2),
                     "mib_per_s": round(size_mib / best[0]), "rss_mib": round(best[1] / 1024)})
        print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1024,4096", help="guest RAM sizes in MiB, comma-separated")
    ap.add_argument("--kinds", default="dense,half-zero")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/wincrash-bench"))
    ap.add_argument("--by-input", action="store_true", help="MiB/s per input kind (ELF, raw, kdump, savevm, ...)")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    if args.by_input:
        rows = [row for s in args.sizes.split(",") for row in bench_inputs(int(s), args.rounds, args.dir)]
        shutil.rmtree(args.dir, ignore_errors=True)
        print(json.dumps({"load_before": load_before, "load_after": os.getloadavg(), "cpus": os.cpu_count(),
                          "rows": rows}, indent=2))
        return
    rows = [bench(int(s), kind, args.rounds, args.dir) for s in args.sizes.split(",") for kind in args.kinds.split(",")]
    shutil.rmtree(args.dir, ignore_errors=True)
    for r in rows:
        print(r, file=sys.stderr)
    print(json.dumps({"load_before": load_before, "load_after": os.getloadavg(), "cpus": os.cpu_count(),
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
