"""Guest-physical memory as a sparse page map, and a seeded allocator of free physical pages.

A 64 GiB guest is almost all zeros: only the pages we write exist ({page number: 4 KiB}), so a guest of
any size costs a few MiB of RAM and the writers can seek over everything else.
"""

from __future__ import annotations

import bisect
import random
import struct

PAGE = 0x1000
LARGE = 0x200000
PAGES_PER_LARGE = LARGE // PAGE


class PageMap:
    """Sparse guest-physical memory: {pfn: bytearray(4096)}; absent pages read as zeros."""

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        # Bulk filler (benchmarks): {first pfn of a 2 MiB chunk: seed}; the random bytes are made only
        # while writing, so gigabytes of "used" RAM cost no memory here.
        self.filler: dict[int, int] = {}

    @staticmethod
    def filler_bytes(seed: int) -> bytes:
        return random.Random(seed).randbytes(LARGE)

    def page(self, pfn: int) -> bytearray:
        buf = self.pages.get(pfn)
        if buf is None:
            buf = self.pages[pfn] = bytearray(PAGE)
        return buf

    def write(self, pa: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            off = (pa + pos) % PAGE
            n = min(PAGE - off, len(data) - pos)
            self.page((pa + pos) // PAGE)[off:off + n] = data[pos:pos + n]
            pos += n

    def read(self, pa: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            cur = pa + len(out)
            off = cur % PAGE
            n = min(PAGE - off, size - len(out))
            page = self.pages.get(cur // PAGE)
            out += page[off:off + n] if page is not None else bytes(n)
        return bytes(out)

    def write_u64(self, pa: int, value: int) -> None:
        self.write(pa, struct.pack("<Q", value))

    def read_u64(self, pa: int) -> int:
        return struct.unpack("<Q", self.read(pa, 8))[0]


class PhysAllocator:
    """Hands out free physical pages at random places inside Windows' own RAM runs (seeded).

    Spreading structures over the whole of RAM (above 4 GiB too) catches converters that only look at
    low memory; keeping them inside the runs means Windows' view (MmPhysicalMemoryBlock) covers them.
    """

    def __init__(self, runs: list[tuple[int, int]], rng: random.Random) -> None:
        self.runs = [r for r in runs if r[1] > 0]
        self.rng = rng
        self.used: set[int] = set()
        self._cum: list[int] = []
        total = 0
        for _, count in self.runs:
            total += count
            self._cum.append(total)
        self.total = total

    def _random_pfn(self) -> int:
        k = self.rng.randrange(self.total)
        i = bisect.bisect_right(self._cum, k)
        start = self._cum[i - 1] if i else 0
        return self.runs[i][0] + (k - start)

    def page(self) -> int:
        """Physical address of a fresh 4 KiB page."""
        for _ in range(10000):
            pfn = self._random_pfn()
            if pfn not in self.used:
                self.used.add(pfn)
                return pfn * PAGE
        raise RuntimeError("guest RAM exhausted")

    def take(self, pa: int) -> int:
        """Claim the page at ``pa`` (a place Windows fixes, e.g. the System PML4 low in RAM); returns ``pa``.

        ValueError when the page is already used or lies outside Windows' runs.
        """
        pfn = pa // PAGE
        if pfn in self.used or not any(base <= pfn < base + count for base, count in self.runs):
            raise ValueError(f"physical page {pa:#x} is not free Windows RAM")
        self.used.add(pfn)
        return pfn * PAGE

    def large(self) -> int:
        """Physical address of a fresh 2 MiB-aligned, 2 MiB-long free range inside one run."""
        for _ in range(10000):
            pfn = self._random_pfn() & ~(PAGES_PER_LARGE - 1)
            if not any(base <= pfn and pfn + PAGES_PER_LARGE <= base + count for base, count in self.runs):
                continue
            if any(p in self.used for p in range(pfn, pfn + PAGES_PER_LARGE)):
                continue
            self.used.update(range(pfn, pfn + PAGES_PER_LARGE))
            return pfn * PAGE
        raise RuntimeError("no free 2 MiB range in guest RAM")
