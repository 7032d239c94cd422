"""Guest-physical ranges mapped to file ranges: the one value every memory container format produces.

A container format (memory/qemu_elf.py, savevm.py, dmp.py, raw.py) only says where each range of
guest-physical memory lives in its file, as a `MemoryMap`; memory/source.py turns that into the
`PhysicalSource` that analysis reads and the writers copy from (volatility3's split of detecting a
layer from reading through it).
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import overload

from construct import Container

from wincrash.memory.dump_header import DumpHeaderFacts


@dataclass(frozen=True)
class Segment:
    """Guest-physical [paddr, paddr+size) stored at file ``offset`` (all in bytes)."""

    paddr: int
    size: int
    offset: int
    filesz: int  # bytes present in the file (< size when the file is truncated)


class PackedSegments(Sequence[Segment]):
    """Many segments in three arrays (24 bytes each instead of a Python object).

    Savevm streams and bitmap dumps describe memory page by page or run by run; a 64 GiB guest
    would otherwise need millions of Segment objects. ``file_size`` (bytes), when given, clips
    each segment's ``filesz`` to what the file holds.
    """

    def __init__(self, file_size: int | None = None) -> None:
        self.paddr = array("Q")
        self.size = array("Q")
        self.offset = array("Q")
        self.file_size = file_size

    @classmethod
    def from_arrays(cls, paddr: array, size: array, offset: array, file_size: int | None = None) -> PackedSegments:
        """Segments from parallel arrays already sorted by ``paddr`` (bytes each)."""
        packed = cls(file_size)
        packed.paddr, packed.size, packed.offset = paddr, size, offset
        return packed

    def append(self, seg: Segment) -> None:
        """Add a segment after the last one; one contiguous in memory and in the file extends it."""
        if self.paddr and self.paddr[-1] + self.size[-1] == seg.paddr and \
                self.offset[-1] + self.size[-1] == seg.offset:
            self.size[-1] += seg.size
            return
        self.paddr.append(seg.paddr)
        self.size.append(seg.size)
        self.offset.append(seg.offset)

    def within_file(self) -> bool:
        """True when every segment lies wholly inside the file (no ``filesz`` clipping needed)."""
        if self.file_size is None or not self.paddr:
            return True
        return max(map(operator.add, self.offset, self.size)) <= self.file_size

    def held_bytes(self) -> int:
        """Bytes of guest memory the file holds (the sum of ``filesz``), without a Segment object each."""
        if self.within_file():
            return sum(self.size)
        return sum(filesz for _, _, filesz in held_extents(self))

    def __len__(self) -> int:
        return len(self.paddr)

    @overload
    def __getitem__(self, i: int) -> Segment: ...
    @overload
    def __getitem__(self, i: slice) -> list[Segment]: ...

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        size, offset = self.size[i], self.offset[i]
        filesz = size if self.file_size is None else max(0, min(size, self.file_size - offset))
        return Segment(self.paddr[i], size, offset, filesz)

    def __iter__(self) -> Iterator[Segment]:
        return (self[i] for i in range(len(self)))

    def sort(self, key=None) -> None:  # noqa: ANN001 - list.sort's signature; always by paddr
        """Sort by guest-physical address (a no-op for the usual, already sorted, input)."""
        if all(map(operator.le, self.paddr, islice(self.paddr, 1, None))):
            return
        order = sorted(range(len(self)), key=lambda i: self.paddr[i])
        self.paddr, self.size, self.offset = (array("Q", (a[i] for i in order))
                                              for a in (self.paddr, self.size, self.offset))


def held_extents(segments: Sequence[Segment]) -> Iterator[tuple[int, int, int]]:
    """(paddr, file offset, bytes present in the file) of each segment, in order; for PackedSegments straight
    from its arrays (no Segment objects), so that iterating millions of one-page runs stays cheap."""
    if not isinstance(segments, PackedSegments):
        return ((s.paddr, s.offset, s.filesz) for s in segments)
    if segments.within_file():
        return zip(segments.paddr, segments.offset, segments.size, strict=True)
    end = segments.file_size or 0
    return ((pa, off, max(0, min(size, end - off)))
            for pa, off, size in zip(segments.paddr, segments.offset, segments.size, strict=True))


def segment_starts(segments: Sequence[Segment]) -> Sequence[int]:
    """Start addresses for bisect, without building a list for packed segments."""
    return segments.paddr if isinstance(segments, PackedSegments) else [s.paddr for s in segments]


@dataclass(frozen=True)
class MemoryMap:
    """What one container format says about the guest: where its memory lies in the file, and its vCPUs.

    ``segments`` are sorted by guest-physical address and do not overlap; ``missing`` lists
    guest-physical [start, end) byte ranges the container promises but the file lacks (None when
    the format cannot tell); ``machine`` is the ELF e_machine or PE machine type of the guest;
    ``dump_header`` the crash context of a DMP given as input (None for every other format).
    """

    kind: str  # qemu-elf, qemu-savevm, dmp, raw
    segments: Sequence[Segment]
    cpus: tuple[Container, ...] = ()
    machine: int = 0
    missing: tuple[tuple[int, int], ...] | None = None
    notes: tuple[str, ...] = field(default=())
    dump_header: DumpHeaderFacts | None = None
