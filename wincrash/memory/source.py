"""Physical memory sources: guest-physical ranges mapped to byte ranges of an input file.

open_source() detects the container format by content (FORMATS, one class per format, each only
mapping guest-physical ranges to file ranges) and wraps its MemoryMap in a PhysicalSource.

Analysis reads small pieces (read()), the writers copy whole ranges kernel-side from the file
(extents()), so a multi-GiB conversion never pulls every page through Python. Absent memory reads
as zeros, which is what a guest page that QEMU did not dump (or a hole in a sparse file) holds.
"""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from construct import Container

from wincrash.inputs import open_input
from wincrash.memory.dmp import Dmp
from wincrash.memory.qemu_elf import QemuElf
from wincrash.memory.raw import Raw, Unconvertible
from wincrash.memory.savevm import QemuSavevm
from wincrash.memory.segments import MemoryMap, Segment, segment_starts

PAGE = 0x1000


@dataclass
class PhysicalSource:
    """Guest-physical memory backed by a file: sorted, non-overlapping segments."""

    path: Path
    fh: BinaryIO
    kind: str  # qemu-elf, qemu-savevm, raw, dmp
    segments: list[Segment]
    cpus: list[Container]  # QEMU CPU states (empty when the format has none)
    machine: int = 0
    missing: list[tuple[int, int]] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.segments.sort(key=lambda s: s.paddr)
        self._starts = segment_starts(self.segments)

    @property
    def fileno(self) -> int:
        return self.fh.fileno()

    @property
    def end(self) -> int:
        """One past the highest guest-physical address the source describes."""
        return max((s.paddr + s.size for s in self.segments), default=0)

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


class ContainerFormat(Protocol):
    """One input container format: detection by content, then a map of guest-physical ranges to file ranges."""

    kind: str

    @staticmethod
    def detect(head: bytes, size: int) -> bool:
        """True when the file's first 16 bytes ``head`` (and its ``size`` in bytes) are this format's."""

    @staticmethod
    def map(path: Path, fh: BinaryIO, size: int) -> MemoryMap:
        """Where the guest's memory lies in the file; WincrashError when it cannot be read."""


# Tried in order; the first whose detect() accepts the file reads it. Raw accepts anything.
FORMATS: tuple[type[ContainerFormat], ...] = (QemuElf, QemuSavevm, Dmp, Unconvertible, Raw)


def detect_format(head: bytes, size: int) -> type[ContainerFormat]:
    """The container format of a file that starts with ``head`` (16 bytes) and holds ``size`` bytes."""
    return next(fmt for fmt in FORMATS if fmt.detect(head, size))


def open_source(path: Path) -> PhysicalSource:
    """Open a memory image read-only and map it; the format is recognised by content.

    Raises WincrashError for an unreadable file, a format that cannot be converted, or a container
    whose headers the file cannot hold. The returned source owns the open file (close ``fh``).
    """
    fh, size = open_input(path)
    try:
        fmt = detect_format(os.pread(fh.fileno(), 16, 0), size)
        mapped = fmt.map(path, fh, size)
    except BaseException:
        fh.close()
        raise
    return PhysicalSource(path, fh, mapped.kind, mapped.segments, list(mapped.cpus),  # type: ignore[arg-type]
                          mapped.machine, None if mapped.missing is None else list(mapped.missing),
                          list(mapped.notes))
