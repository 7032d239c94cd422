#!/usr/bin/env python3
"""Measure what `wincrash dump` / `capture` cost: guest pause time and dump throughput.

Not a test: numbers for the issue note. Runs real qemu-system-x86_64 (TCG) guests:
- "no OS" guests (anonymous RAM, SeaBIOS idle) of each size: `wincrash dump` over the UNIX socket
  (pipe, wincrash writes the file) and over TCP (QEMU writes the file itself);
- the synthetic Windows guest: `wincrash capture --crash` end to end against doing the same by hand
  (`wincrash nmi --wait`, `wincrash dump`, `wincrash convert`).

- with --stream-only: `capture` (full: MEMORY.DMP streamed; kernel: streamed into an unnamed scratch file as
  a complete bitmap DMP, then cut; the scratch file is counted through /proc/PID/fd) against a
  bare `dump` of the same running synthetic Windows guest (2 and 4 GiB, free RAM filled with random data
  so the dump is dense): wall time, guest paused time, peak new disk space (files in the output folder,
  sampled every 20 ms), peak RSS, alternated rounds, best of each.

Usage: .venv/bin/python scripts/bench_capture.py [--sizes 2048,4096] [--capture-mib 2048] [--dir DIR]
       .venv/bin/python scripts/bench_capture.py --stream-only [--stream-sizes 2048,4096] [--fill 1.0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
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


def measured(*args: object, sampler: DiskSampler | None = None) -> tuple[float, dict, int]:
    """(wall seconds, --json result, peak RSS in KiB) of one wincrash run: os.wait4's rusage of that child alone
    (RUSAGE_CHILDREN would also count every QEMU reaped before it). ``sampler`` also watches the child's
    unnamed (O_TMPFILE) files."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "wincrash", *map(str, args)], cwd=REPO, stdout=out, stderr=err)
        if sampler is not None:
            sampler.pid = proc.pid
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        took = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"wincrash {args} failed: {err.read().decode()}")
        return took, json.loads(out.read()), usage.ru_maxrss


class DiskSampler(threading.Thread):
    """Peak bytes allocated (st_blocks) by all files in a directory, hidden partial files included, and by the
    unnamed (O_TMPFILE) files there that process ``pid`` holds open (found through /proc/PID/fd), sampled
    every 20 ms: the new disk space a command needs at its worst moment."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory, self.peak, self.stop = directory, 0, threading.Event()
        self.pid: int | None = None
        self.start()

    def _unnamed(self, seen: set[tuple[int, int]]) -> int:
        total = 0
        fds = f"/proc/{self.pid}/fd"
        with contextlib.suppress(OSError):
            for entry in os.scandir(fds):
                with contextlib.suppress(OSError):
                    target = os.readlink(entry.path)
                    if target.startswith(f"{self.directory}/") and target.endswith(" (deleted)"):
                        st = os.stat(entry.path)
                        if (st.st_dev, st.st_ino) not in seen:
                            seen.add((st.st_dev, st.st_ino))
                            total += st.st_blocks * 512
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            seen: set[tuple[int, int]] = set()
            for entry in os.scandir(self.directory):
                with contextlib.suppress(OSError):  # renamed or removed between listing and stat
                    st = entry.stat(follow_symlinks=False)
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
            if self.pid is not None:
                total += self._unnamed(seen)
            self.peak = max(self.peak, total)
            self.stop.wait(0.02)

    def finish(self) -> int:
        self.stop.set()
        self.join()
        return self.peak


class FilledGuest(TestGuest):
    """The synthetic Windows test guest whose free RAM (the holes of its RAM file, in whole 2 MiB blocks above
    16 MiB) holds random data, so that its dump is dense like a busy guest's; written before QEMU maps it."""

    def __init__(self, *args: object, fill: float = 1.0, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.fill = fill
        self.filled = 0

    def command(self) -> list[str]:
        cmd = super().command()
        ram_file = self.workdir / "ram.img"
        noise = os.urandom(8 << 21)
        block = 2 << 20
        with open(ram_file, "r+b") as fh:
            fd = fh.fileno()
            pos = 16 << 20
            while pos < self.ram_size:
                try:
                    hole = os.lseek(fd, pos, os.SEEK_HOLE)
                except OSError:
                    break
                try:
                    data = os.lseek(fd, hole, os.SEEK_DATA)
                except OSError:
                    data = self.ram_size
                lo, hi = (hole + block - 1) // block * block, data // block * block
                for at in range(lo, hi, block):
                    if (at // block) % 100 < self.fill * 100:
                        start = (at // block) % 7 * block
                        os.pwrite(fd, noise[start:start + block], at)
                        self.filled += block
                pos = max(data, hole + 1)
        return cmd


WINDOWS_MAX_MIB = 2048


def bench_stream(work: Path, mib: int, rounds: int = 2, fill: float = 1.0) -> list[dict]:
    """Bare `dump` against `capture` (full: streamed; kernel: staged and cut, streamed too) of the same running
    synthetic Windows guest with ``fill`` of its free RAM random, alternated ``rounds`` times; best round each."""
    rows: dict[str, list[dict]] = {}
    # The test guest's pc machine maps RAM above 3 GiB at 4 GiB and up, where the synthetic Windows does not
    # expect it (its pages there are dropped and it is not found): above 2 GiB of RAM its Windows is made for
    # 2 GiB (its runs cover 2 GiB; the rest of RAM, filled too, is outside them: the worst case for capture,
    # which keeps such pages until the end).
    memory = synth_memory(cpus=2, ram_mib=min(mib, WINDOWS_MAX_MIB), seed=7)
    out_dir = work / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    with FilledGuest(work / "stream", memory=memory, ram_mib=mib, fill=fill) as guest:
        for _ in range(rounds):
            for mode, args in (("dump", ("dump",)), ("capture full", ("capture",)),
                               ("capture kernel", ("capture", "--format", "kernel"))):
                os.sync()
                out = out_dir / ("bare.elf" if mode == "dump" else "MEMORY.DMP")
                sampler = DiskSampler(out_dir)
                took, res, rss = measured(*args, guest.qmp_path, "-o", out, "--json", "--force", sampler=sampler)
                peak = sampler.finish()
                dump = res if mode == "dump" else res["dump"]
                rows.setdefault(mode, []).append({
                    "guest_mib": mib, "windows_mib": min(mib, WINDOWS_MAX_MIB), "filled_mib": guest.filled >> 20,
                    "mode": mode, "wall_seconds": round(took, 2),
                    "paused_seconds": dump["paused_seconds"], "peak_disk_mib": round(peak / 2**20),
                    "final_disk_mib": round(out.stat().st_blocks * 512 / 2**20),
                    "peak_rss_mib": round(rss / 1024), "streamed": res.get("streamed"),
                    "not_streamed_because": res.get("not_streamed_because")})
                out.unlink()
                print(rows[mode][-1], file=sys.stderr)
    best = [min(v, key=lambda r: r["wall_seconds"]) for v in rows.values()]
    bare = best[0]
    for r in best:
        r["time_vs_dump"] = round(r["wall_seconds"] / bare["wall_seconds"], 2)
        r["disk_vs_ram"] = round(r["peak_disk_mib"] / mib, 2)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2048,4096")
    ap.add_argument("--capture-mib", type=int, default=2048)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (needs ~2x the largest guest free)")
    ap.add_argument("--stream-only", action="store_true", help="only capture (full, kernel) vs bare dump")
    ap.add_argument("--stream-sizes", default="2048,4096", help="guest RAM sizes (MiB) for --stream-only")
    ap.add_argument("--fill", type=float, default=1.0, help="fraction of free guest RAM filled with random data")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.stream_only:
        work = args.dir or Path(tempfile.mkdtemp(prefix="wcbench-"))
        load_before = os.getloadavg()
        try:
            rows = [r for mib in map(int, args.stream_sizes.split(","))
                    for r in bench_stream(work / str(mib), mib, args.rounds, args.fill)]
        finally:
            if args.dir is None:
                shutil.rmtree(work, ignore_errors=True)
        for r in rows:
            print(r, file=sys.stderr)
        print(json.dumps({"load_before": load_before, "load_after": os.getloadavg(), "stream": rows}, indent=2))
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
