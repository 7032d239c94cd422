"""Structure-aware fuzzing of every input path, in a pool of bounded worker processes.

Seeds come from a generated guest (testkit: QEMU ELF, raw image, and the DMPs wincrash writes from it,
LiME and libvirt/kdump-style wrappers built here) and, when present, ../shared/samples (savevm and
kdump cases: read, never copied into the repository). Each mutation knows its format's header fields
(offset, width) and sets them to boundary values, flips header bytes, truncates, or (raw images) writes
page-table patterns that map themselves. Each input runs in a worker (fuzz_worker.py) with RLIMIT_AS and
a wall-clock deadline: a traceback, a hang, a blow-up or a written dump that fails `info` is a failure.
"""

from __future__ import annotations

import json
import os
import random
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

WORKER = Path(__file__).parent / "fuzz" / "fuzz_worker.py"
MEMORY_LIMIT = 2 << 30  # bytes of address space per worker (RLIMIT_AS)
DEADLINE = 10.0  # seconds per input
FORMATS = ("full", "bitmap", "kernel")


@dataclass
class Seed:
    """A seed input: ``path`` (may be sparse), the header ``fields`` (offset, width in bytes) a mutation targets,
    ``mode`` convert or pagefile, and ``head`` bytes of the file where byte flips land."""

    name: str
    path: Path
    fields: list[tuple[int, int]]
    mode: str = "convert"
    head: int = 0x3000
    raw_pages: bool = False


@dataclass
class Failure:
    name: str
    why: str
    data_path: Path


@dataclass
class Outcome:
    ran: int = 0
    failures: list[Failure] = field(default_factory=list)


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` keeping holes (SEEK_DATA extents only)."""
    size = src.stat().st_size
    with open(src, "rb") as s, open(dst, "wb") as d:
        d.truncate(size)
        pos = 0
        while pos < size:
            try:
                data = os.lseek(s.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(s.fileno(), data, os.SEEK_HOLE)
            os.copy_file_range(s.fileno(), d.fileno(), hole - data, data, data)
            pos = hole


def interesting(width: int, size: int, rng: random.Random) -> int:
    top = (1 << (8 * width)) - 1
    return rng.choice([0, 1, 2, 7, 0x1000, 0x2000, size, size + 1, size - 1, top, top >> 1, (top >> 1) + 1,
                       rng.randrange(top + 1), 1 << rng.randrange(8 * width)]) & top


def mutate(seed: Seed, dst: Path, rng: random.Random) -> str:
    """Write one mutation of ``seed`` to ``dst``; return a description of what was done (for the report)."""
    sparse_copy(seed.path, dst)
    size = dst.stat().st_size
    ops = []
    with open(dst, "r+b") as fh:
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.5 and seed.fields:
                off, width = rng.choice(seed.fields)
                if off + width <= size:
                    value = interesting(width, size, rng)
                    os.pwrite(fh.fileno(), value.to_bytes(width, "little"), off)
                    ops.append(f"field@0x{off:x}={value:#x}")
            elif kind < 0.75:
                for _ in range(rng.randint(1, 16)):
                    off = rng.randrange(min(size, seed.head) or 1)
                    os.pwrite(fh.fileno(), bytes([rng.randrange(256)]), off)
                ops.append("flips")
            elif kind < 0.85 and seed.raw_pages and size >= 0x1000:
                page = rng.randrange(size // 0x1000) * 0x1000
                target = rng.choice([page, rng.randrange(size // 0x1000) * 0x1000])
                entry = target | rng.choice([0x3, 0x83, 0x63, 0x7])
                os.pwrite(fh.fileno(), struct.pack("<Q", entry) * 512, page)
                ops.append(f"table@0x{page:x}->0x{target:x}")
            else:
                cut = rng.choice([rng.randrange(min(size, seed.head) or 1), rng.randrange(size or 1)])
                fh.truncate(cut)
                size = cut
                ops.append(f"truncate@{cut}")
    return f"{seed.name}: " + ", ".join(ops)


class Pool:
    """Worker processes (fuzz_worker.py) each taking one input at a time, with a deadline and a memory bound."""

    def __init__(self, workers: int, env: dict[str, str]) -> None:
        self.workers = workers
        self.env = env

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(WORKER), str(MEMORY_LIMIT)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)

    def run(self, jobs: Iterator[tuple[Path, str, str, str]], outcome: Outcome) -> None:
        """Run every (path, fmt, mode, description) job; record failures in ``outcome``."""
        lock = threading.Lock()

        def next_job() -> tuple[Path, str, str, str] | None:
            with lock:
                return next(jobs, None)

        def loop() -> None:
            proc = self._spawn()
            try:
                while (job := next_job()) is not None:
                    path, fmt, mode, desc = job
                    proc.stdin.write(json.dumps({"path": str(path), "fmt": fmt, "mode": mode}) + "\n")
                    proc.stdin.flush()
                    ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
                    line = proc.stdout.readline() if ready else ""
                    why = None
                    if not ready:
                        why = f"hang: no answer in {DEADLINE:.0f} s"
                    elif not line:
                        why = f"worker died (exit {proc.wait()}): a crash or a blow-up past {MEMORY_LIMIT >> 20} MiB"
                    else:
                        answer = json.loads(line)
                        why = None if answer["ok"] else answer["why"]
                    if why is not None:
                        keep = path.with_name(f"failed-{outcome.ran}-{path.name}")
                        os.replace(path, keep)
                        with lock:
                            outcome.failures.append(Failure(desc + f" [{fmt}, {mode}]", why, keep))
                        if not ready or not line:
                            proc.kill()
                            proc.wait()
                            proc = self._spawn()
                    else:
                        path.unlink(missing_ok=True)
                    with lock:
                        outcome.ran += 1
            finally:
                proc.kill()
                proc.wait()

        threads = [threading.Thread(target=loop) for _ in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def jobs(seeds: list[Seed], count: int, work: Path, rng: random.Random) -> Iterator[tuple[Path, str, str, str]]:
    """``count`` mutated inputs, seeds taken in turn."""
    for i in range(count):
        seed = seeds[i % len(seeds)]
        dst = work / f"in-{i}"
        desc = mutate(seed, dst, rng)
        yield dst, rng.choice(FORMATS), seed.mode, desc
