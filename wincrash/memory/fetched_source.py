"""Guest-physical memory read on demand through a callable (the VM's monitor), not from a file.

capture finds Windows in a running VM before dumping it: every read() goes to ``fetch(paddr, size)``
(QMP ``pmemsave``, libvirt's virDomainMemoryPeek), in aligned blocks cached for the analysis. Scans over
whole segments (the PML4 scan when no vCPU note helps) see each window of RAM once, through a small
scratch file, so they cost neither disk nor memory in proportion to the guest.
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from construct import Container

from wincrash.memory.qemu_elf import Segment
from wincrash.memory.source import PhysicalSource

BLOCK = 64 << 10  # bytes per fetched block
MAX_BLOCKS = 1024  # blocks kept (64 MiB)
SCAN_WINDOW = 16 << 20  # bytes per window of a whole-memory scan

Fetch = Callable[[int, int], bytes]
"""fetch(guest-physical address, size in bytes) -> exactly ``size`` bytes."""


class FetchedSource(PhysicalSource):
    """A PhysicalSource whose bytes come from ``fetch``; ``segments`` say where RAM is (size == filesz,
    offset unused). ``fetches`` counts the calls made (to measure the analysis' cost)."""

    def __init__(self, fetch: Fetch, ram: Sequence[tuple[int, int]], cpus: list[Container]) -> None:
        scratch = tempfile.TemporaryFile(prefix="wincrash-scan-")  # noqa: SIM115 - closed with the source
        segments = [Segment(pa, size, pa, size) for pa, size in ram]
        super().__init__(Path("<monitor>"), scratch, "monitor", segments, cpus, 0x3E)
        self.fetch = fetch
        self.fetches = 0
        self._blocks: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def _block(self, index: int) -> bytes:
        data = self._blocks.get(index)
        if data is None:
            pa = index * BLOCK
            seg = self.segment_at(pa)
            size = min(BLOCK, seg.paddr + seg.size - pa) if seg else 0
            self.fetches += 1
            data = self.fetch(pa, size).ljust(BLOCK, b"\0") if size else bytes(BLOCK)
            self._blocks[index] = data
            if len(self._blocks) > MAX_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(index)
        return data

    def read(self, paddr: int, size: int) -> bytes:
        """Bytes at guest-physical ``paddr`` (zeros outside RAM), through the block cache."""
        out = bytearray()
        while size > 0:
            index, off = divmod(paddr, BLOCK)
            n = min(size, BLOCK - off)
            out += self._block(index)[off:off + n]
            paddr += n
            size -= n
        return bytes(out)

    def scan_windows(self, limit: int) -> Iterator[tuple[bytes, list[tuple[int, int, int]]]]:
        """Whole-memory scans through the monitor: each RAM window of at most ``limit`` bytes fetched once;
        all-zero windows are skipped."""
        for pa, size in ((s.paddr, s.size) for s in self.segments):
            for at in range(0, size, limit):
                n = min(limit, size - at)
                self.fetches += 1
                data = self.fetch(pa + at, n)
                if data.count(0) != len(data):
                    yield data, [(pa + at, 0, n)]

    def page_extents(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(paddr, scratch-file offset 0, length) windows of the RAM in [start, end) that are not all zero.

        Each window is fetched and written at the start of the scratch file, and is valid until the
        next one is yielded: the caller reads ``self.fileno`` at the offset given, as from any source.
        """
        for pa, length, off in self.pieces(start, end):
            if off is None:
                continue
            for at in range(0, length, SCAN_WINDOW):
                n = min(SCAN_WINDOW, length - at)
                self.fetches += 1
                data = self.fetch(pa + at, n)
                if data.count(0) == len(data):
                    continue
                os.pwrite(self.fileno, data, 0)
                yield pa + at, 0, n
