#!/usr/bin/env python3
"""Benchmark `grab-pagefile`: appliance launch, inspection, download MB/s, peak RSS for a 4 GiB pagefile.

Builds a qcow2 disk with one NTFS partition holding a Windows tree (the real SYSTEM hive from
../shared/samples) and a 4 GiB pagefile.sys (the real triage dump at offset 0, the rest sparse),
then runs the same code path as the CLI in this process and reports what it measured. The disk
is built in a temporary folder (or --workdir) and removed afterwards unless --keep.

    LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg .venv/bin/python scripts/bench_grab_pagefile.py
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO.parent / "shared" / "samples"
sys.path.insert(0, str(REPO))


def build(disk: Path, pagefile_size: int) -> float:
    import guestfs

    hive = lzma.decompress((SAMPLES / "hives" / "SYSTEM_WIN_10_1709.xz").read_bytes())
    src = disk.parent / "SYSTEM"
    src.write_bytes(hive)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(disk), f"{pagefile_size // 2**20 + 1024}M"],
                   check=True, capture_output=True)
    started = time.monotonic()
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(disk), format="qcow2")
    g.launch()
    g.part_disk("/dev/sda", "mbr")
    g.mkfs("ntfs", "/dev/sda1")
    g.mount("/dev/sda1", "/")
    g.mkdir_p("/Windows/System32/config")
    g.upload(str(src), "/Windows/System32/config/SYSTEM")
    g.upload(str(SAMPLES / "real" / "triage_x64.dmp"), "/pagefile.sys")
    g.truncate_size("/pagefile.sys", pagefile_size)
    g.umount_all()
    g.shutdown()
    g.close()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=4.0, help="pagefile size (default 4 GiB)")
    parser.add_argument("--workdir", type=Path, help="where to build the disk and copy files")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    if not (SAMPLES / "real" / "triage_x64.dmp").is_file():
        print(f"needs the real samples in {SAMPLES}", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wincrash-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        disk = work / "bench.qcow2"
        size = int(args.size_gib * 2**30)
        build_s = build(disk, size)
        from wincrash.disk.grab import grab

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = grab([disk], work / "out", progress=False)
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = result.timings
        report = {
            "pagefile_bytes": size,
            "build_disk_s": round(build_s, 1),
            "launch_s": round(t["launch_s"], 1),
            "inspection_s": round(t["inspection_s"], 1),
            "download_s": round(t["download_s"], 1),
            "download_MiB_per_s": round(result.bytes_copied / 2**20 / t["download_s"], 1),
            "cut_dump_bytes": result.dumps[0][1].size if result.dumps and result.dumps[0][1] else None,
            "peak_rss_MiB_before_grab": round(rss_before / 1024, 1),
            "peak_rss_MiB_after_grab": round(rss_peak / 1024, 1),
            "total_s": round(t["total_s"], 1),
            "load_average": os.getloadavg(),
        }
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
