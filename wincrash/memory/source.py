"""Physical memory sources: guest-physical ranges mapped to byte ranges of an input file.

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
from typing import BinaryIO

from construct import Container

from wincrash.errors import WincrashError
from wincrash.inputs import open_input
from wincrash.memory.qemu_elf import ElfLayout, Segment, read_elf_layout

PAGE = 0x1000


@dataclass
class PhysicalSource:
    """Guest-physical memory backed by a file: sorted, non-overlapping segments."""

    path: Path
    fh: BinaryIO
    kind: str  # qemu-elf, raw, dmp
    segments: list[Segment]
    cpus: list[Container]  # QEMU CPU states (empty when the format has none)
    machine: int = 0
    missing: list[tuple[int, int]] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from wincrash.memory.savevm import segment_starts

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


def open_source(path: Path, scratch_dir: Path | None = None) -> PhysicalSource:
    """Open a memory image read-only and map it; the format is recognised by content.

    ``scratch_dir``: where an input whose pages are compressed may be decoded (memory.containers).
    """
    fh, size = open_input(path)
    magic = os.pread(fh.fileno(), 8, 0)
    if magic[:4] == b"\x7fELF":
        layout: ElfLayout = read_elf_layout(fh, size)
        if not layout.segments:
            fh.close()
            raise WincrashError(f"{path}: ELF core without memory segments")
        # h6-formats: paging=true dumps have one PT_LOAD per virtual mapping (overlapping in physical memory)
        from wincrash.memory.missing import paging_segments

        paging = paging_segments(layout.segments)
        if paging is not None:
            source = PhysicalSource(path, fh, "qemu-elf (paging)", paging[0], list(layout.cpus), layout.machine)
            source.notes.append(paging[1])
            return source
        return PhysicalSource(path, fh, "qemu-elf", list(layout.segments), list(layout.cpus), layout.machine,
                              layout.missing_ranges)
    if magic in (b"PAGEDU64",):
        return _open_dmp(path, fh, size)
    if magic[:4] == b"QEVM":
        from wincrash.memory.savevm import savevm_segments

        segments, nonzero_fill = savevm_segments(path, fh)
        source = PhysicalSource(path, fh, "qemu-savevm", segments, [], 0x8664)  # type: ignore[arg-type]
        if nonzero_fill:
            source.notes.append(f"{nonzero_fill} pages stored with a non-zero fill byte read as zeros")
        return source
    # --- h6-formats hook: libvirt save images, compressed streams, kdump, LiME, not-memory files ---
    from wincrash.memory.containers import open_container

    container = open_container(path, fh, size, scratch_dir)
    if container is not None:
        return container
    # --- end of hook ---
    if magic[:4] in (b"MDMP", b"PAGE", b"HIBR", b"hibr"):
        fh.close()
        raise WincrashError(f"{path}: this input format cannot be converted (use a QEMU "
                            "dump-guest-memory ELF, a savevm stream, a raw memory image or a 64-bit full/bitmap DMP)")
    # Anything else is taken as a raw physical memory image starting at address 0.
    if size < PAGE:
        fh.close()
        raise WincrashError(f"{path}: too small to be a memory image ({size} bytes)")
    return PhysicalSource(path, fh, "raw", [Segment(0, size, 0, size)], [])


def _open_dmp(path: Path, fh: BinaryIO, size: int) -> PhysicalSource:
    """An existing full or bitmap DMP as a memory source (to re-write or repair it)."""
    from wincrash.formats.dump import BITMAP_SUMMARY_HEADER, DUMP_HEADER64, DUMP_HEADER64_SIZE
    from wincrash.info.dmpfile import parse_runs

    header = DUMP_HEADER64.parse(os.pread(fh.fileno(), DUMP_HEADER64_SIZE, 0))
    parsed = parse_runs(header.PhysicalMemoryBlockBuffer, True)
    if parsed is None:
        raise WincrashError(f"{path}: this dump has no physical memory runs (triage dump?): nothing to convert")
    segments: list[Segment] = []
    if header.DumpType == 1:
        offset = DUMP_HEADER64_SIZE
        for base, count in parsed[2]:
            filesz = max(0, min(count * PAGE, size - offset))
            segments.append(Segment(base * PAGE, count * PAGE, offset, filesz))
            offset += count * PAGE
    elif header.DumpType in (5, 6):
        summary = BITMAP_SUMMARY_HEADER.parse(os.pread(fh.fileno(), 0x38, DUMP_HEADER64_SIZE))
        bitmap = os.pread(fh.fileno(), (summary.Pages + 7) // 8, DUMP_HEADER64_SIZE + 0x38)
        value = int.from_bytes(bitmap, "little")
        offset, pfn = summary.FirstPage, 0
        while value:
            low = (value & -value).bit_length() - 1  # next present page
            value >>= low
            pfn += low
            run = (~value & (value + 1)).bit_length() - 1  # length of the run of ones
            segments.append(Segment(pfn * PAGE, run * PAGE, offset, max(0, min(run * PAGE, size - offset))))
            offset += run * PAGE
            value >>= run
            pfn += run
    else:
        raise WincrashError(f"{path}: DumpType {header.DumpType} cannot be converted (full or bitmap dumps only)")
    return PhysicalSource(path, fh, "dmp", segments, [], 0x8664)
