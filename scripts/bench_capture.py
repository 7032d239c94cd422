#!/usr/bin/env python3
"""Measure what `wincrash dump` / `capture` cost: guest pause time and dump throughput.

Not a test: numbers for the issue note. Runs real qemu-system-x86_64 (TCG) guests:
- "no OS" guests (anonymous RAM, SeaBIOS idle) of each size: `wincrash dump` over the UNIX socket
  (pipe, wincrash writes the file) and over TCP (QEMU writes the file itself);
- the synthetic Windows guest: `wincrash capture --crash` end to end against doing the same by hand
  (`wincrash nmi --wait`, `wincrash dump`, `wincrash convert`).

Usage: .venv/bin/python scripts/bench_capture.py [--sizes 2048,4096] [--capture-mib 2048] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wincrash_testkit.testguest.memory import synth_memory  # noqa: E402
from wincrash_testkit.testguest.vm import TestGuest  # noqa: E402


def wincrash(*args: object) -> tuple[float, dict]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "wincrash", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"wincrash {args} failed: {proc.stderr}")
    return took, (json.loads(proc.stdout) if "--json" in args else {})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_dump(work: Path, mib: int) -> list[dict]:
    rows = []
    port = free_port()
    with TestGuest(work / f"noos{mib}", with_os=False, ram_mib=mib,
                   extra_args=["-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off"]) as guest:
        time.sleep(2)  # let SeaBIOS settle
        for how, vm in (("unix socket, pipe -> wincrash writes", guest.qmp_path),
                        ("tcp, QEMU writes the file", f"tcp:127.0.0.1:{port}")):
            out = work / f"d{mib}.elf"
            took, res = wincrash("dump", vm, "-o", out, "--json", "--force")
            rows.append({"guest_mib": mib, "path": how, "seconds": res["seconds"], "wall_seconds": round(took, 2),
                         "paused_seconds": res["paused_seconds"], "mib_per_s": res["throughput_mib_s"]})
            out.unlink()
    return rows


def bench_capture(work: Path, mib: int) -> dict:
    results = {}
    for mode in ("by hand", "capture", "by hand ", "capture "):  # alternate: page cache and writeback even out
        os.sync()
        memory = synth_memory(cpus=2, ram_mib=mib, seed=7)
        with TestGuest(work / f"syn{mode[0]}", memory=memory, ram_mib=mib) as guest:
            out = work / "MEMORY.DMP"
            if mode == "capture":
                took, _ = wincrash("capture", guest.qmp_path, "-o", out, "--crash", "--force", "--json")
            else:
                t1, _ = wincrash("nmi", guest.qmp_path, "--wait", "30", "--json")
                t2, _ = wincrash("dump", guest.qmp_path, "-o", work / "v.elf", "--force", "--json")
                t3, _ = wincrash("convert", work / "v.elf", "-o", out, "--force", "--json")
                took = t1 + t2 + t3
                (work / "v.elf").unlink()
            out.unlink()
            results.setdefault(mode.strip(), []).append(round(took, 2))
    return {"guest_mib": mib, **{k: min(v) for k, v in results.items()}}


def measured(*args: object) -> tuple[float, dict, int]:
    """(wall seconds, --json result, peak RSS in KiB) of one wincrash run (os.wait4's rusage of the child)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "wincrash", *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    _pid, status, usage = os.wait4(proc.pid, 0) if proc.returncode is None else (0, 0, None)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"wincrash {args} failed: {err}")
    rss = usage.ru_maxrss if usage else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return took, json.loads(out), rss


def disk_used(path: Path) -> int:
    """Bytes the file occupies on disk (holes cost nothing)."""
    return path.stat().st_blocks * 512


def bench_stream(work: Path, mib: int, rounds: int = 2) -> list[dict]:
    """Streaming `capture` against a bare `dump` of the same running synthetic Windows guest (alternated)."""
    rows: dict[str, list[dict]] = {}
    memory = synth_memory(cpus=2, ram_mib=mib, seed=7)
    with TestGuest(work / "stream", memory=memory, ram_mib=mib) as guest:
        for _ in range(rounds):
            for mode in ("dump", "capture"):
                os.sync()
                out = work / ("bare.elf" if mode == "dump" else "MEMORY.DMP")
                took, res, rss = measured(mode, guest.qmp_path, "-o", out, "--json", "--force")
                dump = res if mode == "dump" else res["dump"]
                rows.setdefault(mode, []).append({
                    "guest_mib": mib, "mode": mode, "wall_seconds": round(took, 2),
                    "paused_seconds": dump["paused_seconds"], "disk_mib": round(disk_used(out) / 2**20),
                    "peak_rss_mib": round(rss / 1024), "streamed": res.get("streamed")})
                out.unlink()
    return [min(v, key=lambda r: r["wall_seconds"]) for v in rows.values()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2048,4096")
    ap.add_argument("--capture-mib", type=int, default=2048)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (needs ~2x the largest guest free)")
    ap.add_argument("--stream-only", action="store_true", help="only streaming capture vs bare dump")
    args = ap.parse_args()
    if args.stream_only:
        work = args.dir or Path(tempfile.mkdtemp(prefix="wcbench-"))
        try:
            rows = bench_stream(work, args.capture_mib)
        finally:
            if args.dir is None:
                shutil.rmtree(work, ignore_errors=True)
        for r in rows:
            print(r)
        print(json.dumps({"stream": rows}))
        return
    work = args.dir or Path(tempfile.mkdtemp(prefix="wcbench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = [r for mib in map(int, filter(None, args.sizes.split(","))) for r in bench_dump(work, mib)]
        cap = bench_capture(work, args.capture_mib)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'guest':>7}  {'path':<38} {'dump s':>7} {'paused s':>9} {'MiB/s':>7}")
    for r in rows:
        print(f"{r['guest_mib']:>5}Mi  {r['path']:<38} {r['seconds']:>7.2f} {r['paused_seconds']:>9.2f} "
              f"{r['mib_per_s']:>7.0f}")
    print(f"capture --crash of a {cap['guest_mib']} MiB synthetic Windows: {cap['capture']} s end to end, "
          f"{cap['by hand']} s by hand (nmi --wait + dump + convert)")
    print(json.dumps({"dump": rows, "capture": cap, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
