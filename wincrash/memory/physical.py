"""PhysicalSource: a guest's physical memory as file ranges (what every container format maps to).

Built by memory/source.py's open_source from one container format's MemoryMap; read by windows/
(analysis) and dmp/ (writers). Imports nothing above memory/.
"""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from construct import Container

from wincrash.memory.dump_header import DumpHeaderFacts
from wincrash.memory.segments import PackedSegments, Segment, held_extents, segment_starts

PAGE = 0x1000


@dataclass
class PhysicalSource:
    """Guest-physical memory backed by a file: sorted, non-overlapping segments.

    ``dump_header``: the crash context of a DMP given as input (memory.dump_header; None for other inputs).
    """

    path: Path
    fh: BinaryIO
    kind: str  # qemu-elf, qemu-savevm, raw, dmp
    segments: list[Segment]
    cpus: list[Container]  # QEMU CPU states (empty when the format has none)
    machine: int = 0
    missing: list[tuple[int, int]] | None = None
    notes: list[str] = field(default_factory=list)
    dump_header: DumpHeaderFacts | None = None

    def __post_init__(self) -> None:
        self.segments.sort(key=lambda s: s.paddr)
        self._starts = segment_starts(self.segments)

    @cached_property
    def held_pages(self) -> int:
        """4 KiB pages of guest memory the file really holds (sum of the segments' ``filesz``): the bound
        for any work driven by what the input's own tables claim (page-table walks, run lists)."""
        if isinstance(self.segments, PackedSegments):
            return self.segments.held_bytes() // PAGE
        return sum(filesz for _, _, filesz in self.extents()) // PAGE

    def extents(self) -> Iterator[tuple[int, int, int]]:
        """(guest-physical address, file offset, bytes the file holds) of each segment, in address order,
        without building a Segment object per segment (a bitmap dump may have millions of one-page runs)."""
        return held_extents(self.segments)

    def scan_windows(self, limit: int) -> Iterator[tuple[bytes, list[tuple[int, int, int]]]]:
        """Whole-memory scans: (data, [(guest-physical address, offset in data, bytes)]) windows of at most
        ``limit`` bytes, in file order, grouping segments that lie back to back in the file (a bitmap dump's
        one-page runs); windows that are holes of a sparse file are skipped (zero pages hold nothing)."""
        for span_off, span_len, pieces in file_spans(self.extents(), limit):
            if next(self.data_extents(span_off, span_len), None) is None:
                continue
            yield os.pread(self.fileno, span_len, span_off), pieces

    @property
    def fileno(self) -> int:
        return self.fh.fileno()

    @property
    def end(self) -> int:
        """One past the highest guest-physical address the source describes."""
        if not self.segments:
            return 0
        last = self.segments[-1]  # sorted and non-overlapping: the last segment ends highest
        return last.paddr + last.size

    def segment_at(self, paddr: int) -> Segment | None:
        i = bisect.bisect_right(self._starts, paddr) - 1
        if i >= 0:
            seg = self.segments[i]
            if paddr < seg.paddr + seg.filesz:
                return seg
        return None

    def read(self, paddr: int, size: int) -> bytes:
        """Bytes at guest-physical ``paddr``; zeros where the source holds nothing."""
        out = bytearray()
        while size > 0:
            seg = self.segment_at(paddr)
            if seg is None:
                nxt = bisect.bisect_right(self._starts, paddr)
                gap = (self._starts[nxt] - paddr) if nxt < len(self._starts) else size
                n = min(size, gap)
                out += bytes(n)
            else:
                n = min(size, seg.paddr + seg.filesz - paddr)
                data = os.pread(self.fileno, n, seg.offset + paddr - seg.paddr)
                out += data.ljust(n, b"\0")
            paddr += n
            size -= n
        return bytes(out)

    def read_u64(self, paddr: int) -> int:
        return int.from_bytes(self.read(paddr, 8), "little")

    def pieces(self, start: int, end: int) -> Iterator[tuple[int, int, int | None]]:
        """(paddr, length, file offset or None for absent) covering guest-physical [start, end)."""
        pos = start
        while pos < end:
            seg = self.segment_at(pos)
            if seg is None:
                nxt = bisect.bisect_right(self._starts, pos)
                stop = min(end, self._starts[nxt]) if nxt < len(self._starts) else end
                yield pos, stop - pos, None
            else:
                stop = min(end, seg.paddr + seg.filesz)
                yield pos, stop - pos, seg.offset + pos - seg.paddr
            pos = stop

    def page_extents(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(guest-physical address, file offset, length) of the data in [start, end), widened to whole pages.

        A file's data extents follow the file's block boundaries, which need not match guest pages
        (QEMU's ELF segments and savevm pages start at arbitrary file offsets), so each extent is
        widened to the guest pages it touches.
        """
        for pa, length, off in self.pieces(start, end):
            if off is None:
                continue
            for data_off, n in self.data_extents(off, length):
                lo = pa + (data_off - off)
                hi = lo + n
                lo, hi = max(pa, lo & ~(PAGE - 1)), min(pa + length, (hi + PAGE - 1) & ~(PAGE - 1))
                yield lo, off + (lo - pa), hi - lo

    def data_extents(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """Sub-ranges of file bytes [offset, offset+length) that hold data (not holes).

        Uses SEEK_DATA/SEEK_HOLE so that a sparse dump of a mostly idle guest is neither read nor
        copied where it is empty.
        """
        end = offset + length
        pos = offset
        fd = self.fileno
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return  # only a hole remains
                yield pos, end - pos  # filesystem without SEEK_DATA: treat all as data
                return
            if data >= end:
                return
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            yield data, hole - data
            pos = hole


def file_spans(extents: Iterable[tuple[int, int, int]], limit: int
                ) -> Iterator[tuple[int, int, list[tuple[int, int, int]]]]:
    """Group (paddr, file offset, bytes) extents that follow each other in the file into spans of at most
    ``limit`` bytes (a longer extent is cut): (span file offset, span bytes, [(paddr, offset in span, bytes)])."""
    start = length = 0
    pieces: list[tuple[int, int, int]] = []
    for pa, off, n in extents:
        while n > 0:
            if pieces and (off != start + length or limit - length < 0x1000):
                yield start, length, pieces
                pieces = []
            if not pieces:
                start, length = off, 0
            take = min(n, (limit - length) & ~0xFFF)  # cut on a page boundary
            pieces.append((pa, length, take))
            length += take
            pa, off, n = pa + take, off + take, n - take
    if pieces:
        yield start, length, pieces
