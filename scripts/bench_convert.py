#!/usr/bin/env python3
"""Benchmark `wincrash convert` against `cp` of the same input on the same disk, in one run.

For each guest size: generate a synthetic Windows guest (wincrash_testkit.synth), fill part of its RAM with
random data (a busy guest), then time `cp` of the ELF, `convert --format full` and
`convert --format bitmap`, and record each child's peak RSS (wait4 rusage). A mostly-zero guest
(no fill) shows the bitmap format's advantage. Ratios are throughput ratios to cp measured in the
same run, since this machine is shared and noisy. Usage:

    .venv/bin/python scripts/bench_convert.py [--sizes 1024,4096] [--fill 0.5] [--dir /tmp/bench]
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


def bench(size_mib: int, fraction: float, workdir: Path) -> dict:
    guest = generate(GuestSpec(build=19041, cpus=4, ram_mib=size_mib, seed=size_mib))
    elf = workdir / f"guest-{size_mib}.elf"
    with open(elf, "wb") as fh:
        write_qemu_elf(fh, guest)
    data = fill(elf, guest, fraction) if fraction else 0
    wincrash = [sys.executable, "-m", "wincrash"]
    copy = workdir / "copy.elf"
    row: dict = {"ram_mib": size_mib, "data_mib": data >> 20, "elf_bytes": elf.stat().st_size}
    run(["cp", str(elf), str(copy)])  # warm the page cache, as the conversions will find it
    copy.unlink()
    row["cp_s"], _rss, _ = run(["cp", str(elf), str(copy)])
    copy.unlink()
    # convert fsyncs its output before renaming it (a dump must survive a host crash); cp does not,
    # so also time cp followed by an fsync of the copy.
    row["cp_fsync_s"], _rss, _ = run(["sh", "-c", f"cp '{elf}' '{copy}' && sync '{copy}'"])
    copy.unlink()
    for fmt in ("full", "bitmap"):
        out = workdir / f"out-{fmt}.dmp"
        seconds, rss, stdout = run(wincrash + ["convert", str(elf), "-o", str(out), "--format", fmt, "--json",
                                               "--force"])
        result = json.loads(stdout)
        row[f"{fmt}_s"] = seconds
        row[f"{fmt}_ratio_to_cp"] = row["cp_s"] / seconds
        row[f"{fmt}_ratio_to_cp_fsync"] = row["cp_fsync_s"] / seconds
        row[f"{fmt}_peak_rss_mib"] = rss / 1024
        row[f"{fmt}_find_windows_s"] = result["seconds_finding_windows"]
        row[f"{fmt}_bytes"] = out.stat().st_size
        out.unlink()
    elf.unlink()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1024,4096", help="guest RAM sizes in MiB, comma-separated")
    ap.add_argument("--fill", type=float, default=0.5, help="fraction of free RAM filled with random data")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/wincrash-bench"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = [bench(int(s), args.fill, args.dir) for s in args.sizes.split(",")]
    rows.append({**bench(int(args.sizes.split(",")[-1]), 0.0, args.dir), "note": "mostly-zero guest"})
    shutil.rmtree(args.dir, ignore_errors=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
