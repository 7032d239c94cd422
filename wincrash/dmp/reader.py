"""One reader for Microsoft crash dump files (DUMP_HEADER64 / DUMP_HEADER32, MEMORY.DMP).

`read_dmp` reads the header (8 KiB), the bitmap summary or triage sub-header and the secondary
data headers, never the memory, and returns a frozen `DmpFile`: what `info` summarises, what
`grab-pagefile` needs to cut a dump out of pagefile.sys (its extent), and what the memory layer
needs to read a full or bitmap dump as guest-physical memory (dmp/pagemap.py builds on it). Built only on
wincrash.formats; every size the header states is checked against the file's real size before
anything is read or allocated with it. Layouts: ../shared/DESIGN.md §3, kdmp-parser, real dumps.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

from construct import Container

from wincrash.errors import WincrashError
from wincrash.formats.dump import (
    BITMAP_FULL_SIGNATURE,
    BITMAP_KERNEL_SIGNATURE,
    BITMAP_SUMMARY_HEADER,
    BITMAP_SUMMARY_HEADER_SIZE,
    DUMP_HEADER32,
    DUMP_HEADER32_SIZE,
    DUMP_HEADER64,
    DUMP_HEADER64_SIZE,
    DUMP_SIGNATURE32,
    DUMP_SIGNATURE64,
    PAGE_PATTERN_U32,
    PAGE_PATTERN_U64,
    PAGE_SIZE,
    PHYSICAL_MEMORY_DESCRIPTOR32_HEAD,
    PHYSICAL_MEMORY_DESCRIPTOR64_HEAD,
    PHYSICAL_MEMORY_RUN32,
    PHYSICAL_MEMORY_RUN64,
    DumpType,
)
from wincrash.formats.triage import TRIAGE_DUMP64

BITMAP_TYPES = (DumpType.BITMAP, DumpType.LIVE_KERNEL_BITMAP)
RUN_TYPES = (DumpType.FULL, DumpType.KERNEL, DumpType.BITMAP, DumpType.LIVE_KERNEL_BITMAP)
BITMAP_OFFSET = DUMP_HEADER64_SIZE + BITMAP_SUMMARY_HEADER_SIZE  # the bitmap follows the summary header
DUMP_BLOB_SIGNATURE = b"DumpBlob"
DUMP_BLOB_HEADER_SIZE = 0x20  # u32 HeaderSize, GUID Tag, u32 DataSize, u32 PrePad, u32 PostPad


def read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes at file ``offset`` (fewer at the end of the file), without moving the position.

    The request is clipped to the file's size first, so a corrupt size field (up to 2**64) never
    becomes an allocation.
    """
    fd = fh.fileno()
    size = max(0, min(size, file_size(fd) - offset))
    return os.pread(fd, size, offset) if size else b""


def file_size(fd: int) -> int:
    """Bytes in the file open as ``fd``: st_size for a regular file, the end offset for a block device."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    position = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.lseek(fd, position, os.SEEK_SET)


def is_page_pattern(value: int, width: int = 8) -> bool:
    """True when a ``width``-byte field still holds Windows' 'PAGE' fill, i.e. it was never set."""
    return value == (PAGE_PATTERN_U64 if width == 8 else PAGE_PATTERN_U32)


@dataclass(frozen=True)
class Runs:
    """The header's PHYSICAL_MEMORY_DESCRIPTOR: Windows' RAM as (BasePage, PageCount) runs, in pages."""

    number: int  # NumberOfRuns as stored (may exceed the buffer's capacity in a corrupt header)
    pages: int  # NumberOfPages as stored
    runs: tuple[tuple[int, int], ...]  # cut at the buffer's capacity (42 runs in a 64-bit header)


@dataclass(frozen=True)
class BitmapSummary:
    """The summary header at 0x2000 of a bitmap dump (DumpType 5/6) and where its bitmap lies."""

    signature: bytes  # b'FDMP' (complete memory) or b'SDMP' (kernel memory)
    first_page: int  # file offset (bytes) of the first present page
    present_pages: int  # TotalPresentPages as stored
    pages: int  # bits in the bitmap (highest PFN + 1)

    @property
    def bitmap_bytes(self) -> int:
        """Bytes of the bitmap (one bit a page, LSB first)."""
        return (self.pages + 7) // 8

    @property
    def bitmap_end(self) -> int:
        """File offset one past the bitmap."""
        return BITMAP_OFFSET + self.bitmap_bytes


@dataclass(frozen=True)
class DmpFile:
    """What a crash dump's headers say, checked against the file's size (bytes). Values only: no file handle."""

    size: int  # bytes in the file
    is64: bool
    header: Container  # DUMP_HEADER64 or DUMP_HEADER32, parsed
    runs: Runs | None  # None when the block holds the 'PAGE' fill (triage dumps)
    bitmap: BitmapSummary | None  # bitmap dumps whose summary header is present and signed
    bitmap_problem: str | None  # why a bitmap dump has no usable summary
    triage: Container | None  # TRIAGE_DUMP64 of a 64-bit triage dump, when present
    primary_extent: int | None  # bytes of header and memory, as the header describes them
    secondary_blobs: int  # 'DumpBlob' secondary data that follows the dump proper
    secondary_bytes: int

    @property
    def dump_type(self) -> int:
        """DumpType as stored (compare with formats.dump.DumpType)."""
        return int(self.header.DumpType)

    @property
    def header_size(self) -> int:
        """0x2000 for a 64-bit header, 0x1000 for a 32-bit one."""
        return DUMP_HEADER64_SIZE if self.is64 else DUMP_HEADER32_SIZE

    @property
    def extent(self) -> int | None:
        """Bytes of the whole dump (secondary data included), or None when the header does not say."""
        return None if self.primary_extent is None else self.primary_extent + self.secondary_bytes


def read_dmp(fh: BinaryIO, size: int | None = None) -> DmpFile:
    """Read the headers of the crash dump at the start of ``fh`` (``size``: the file's bytes, default fstat).

    Raises WincrashError when the file does not start with 'PAGEDU64'/'PAGEDUMP' or is shorter than
    the header (4 or 8 KiB).
    """
    if size is None:
        size = file_size(fh.fileno())
    magic = read_at(fh, 0, 8)
    if magic not in (DUMP_SIGNATURE64, DUMP_SIGNATURE32):
        raise WincrashError("no crash dump header at the start of the file ('PAGEDU64' or 'PAGEDUMP')")
    is64 = magic == DUMP_SIGNATURE64
    header_size = DUMP_HEADER64_SIZE if is64 else DUMP_HEADER32_SIZE
    raw = read_at(fh, 0, header_size)
    if len(raw) < header_size:
        raise WincrashError(
            f"truncated crash dump: {len(raw)} bytes, a {'64' if is64 else '32'}-bit dump header needs {header_size}")
    header = (DUMP_HEADER64 if is64 else DUMP_HEADER32).parse(raw)
    runs = parse_runs(header.PhysicalMemoryBlockBuffer, is64)
    bitmap, bitmap_problem, triage = None, None, None
    if is64 and header.DumpType in BITMAP_TYPES:
        bitmap, bitmap_problem = _read_bitmap_summary(fh)
    elif is64 and header.DumpType == DumpType.TRIAGE:
        head = read_at(fh, DUMP_HEADER64_SIZE, TRIAGE_DUMP64.sizeof())
        triage = TRIAGE_DUMP64.parse(head) if len(head) == TRIAGE_DUMP64.sizeof() else None
    primary = _primary_extent(header, header_size, runs, bitmap, triage, is64)
    blobs, secondary = secondary_data(fh, primary) if primary is not None else (0, 0)
    return DmpFile(size=size, is64=is64, header=header, runs=runs, bitmap=bitmap, bitmap_problem=bitmap_problem,
                   triage=triage, primary_extent=primary, secondary_blobs=blobs, secondary_bytes=secondary)


def parse_runs(buffer: bytes, is64: bool) -> Runs | None:
    """The run list of a header's PhysicalMemoryBlockBuffer; None when it holds the 'PAGE' fill.

    The list is cut at the buffer's capacity; Runs.number keeps the stored NumberOfRuns so the
    caller can report a count beyond it.
    """
    head_struct = PHYSICAL_MEMORY_DESCRIPTOR64_HEAD if is64 else PHYSICAL_MEMORY_DESCRIPTOR32_HEAD
    run_struct = PHYSICAL_MEMORY_RUN64 if is64 else PHYSICAL_MEMORY_RUN32
    head = head_struct.parse(buffer)
    if is_page_pattern(head.NumberOfRuns, 4):
        return None
    first, step = head_struct.sizeof(), run_struct.sizeof()
    capacity = (len(buffer) - first) // step
    runs = []
    for i in range(min(head.NumberOfRuns, capacity)):
        run = run_struct.parse(buffer[first + i * step:first + (i + 1) * step])
        runs.append((run.BasePage, run.PageCount))
    return Runs(head.NumberOfRuns, head.NumberOfPages, tuple(runs))


def _read_bitmap_summary(fh: BinaryIO) -> tuple[BitmapSummary | None, str | None]:
    raw = read_at(fh, DUMP_HEADER64_SIZE, BITMAP_SUMMARY_HEADER_SIZE)
    if len(raw) < BITMAP_SUMMARY_HEADER_SIZE:
        return None, "the bitmap summary header is missing (file ends at the dump header)"
    if raw[:4] not in (BITMAP_FULL_SIGNATURE, BITMAP_KERNEL_SIGNATURE) or raw[4:8] != b"DUMP":
        return None, f"bad bitmap summary signature {raw[:8]!r} (expected 'FDMP'/'SDMP' + 'DUMP')"
    summary = BITMAP_SUMMARY_HEADER.parse(raw)
    return BitmapSummary(raw[:4], summary.FirstPage, summary.TotalPresentPages, summary.Pages), None


def _primary_extent(header: Container, header_size: int, runs: Runs | None, bitmap: BitmapSummary | None,
                    triage: Container | None, is64: bool) -> int | None:
    """Bytes of header and memory by the header's own account (full: runs; bitmap: summary; triage: SizeOfDump)."""
    dump_type = header.DumpType
    if dump_type == DumpType.FULL:
        return None if runs is None else header_size + sum(count for _, count in runs.runs) * PAGE_SIZE
    if dump_type in BITMAP_TYPES and is64:
        return None if bitmap is None else bitmap.first_page + bitmap.present_pages * PAGE_SIZE
    if dump_type == DumpType.TRIAGE and is64:
        return None if triage is None else triage.SizeOfDump
    space = header.RequiredDumpSpace
    if header_size <= space < 1 << 48 and not is_page_pattern(space):
        return space
    return None


def secondary_data(fh: BinaryIO, start: int) -> tuple[int, int]:
    """(number of blobs, bytes) of the secondary data that may follow a dump at file offset ``start``.

    DUMP_BLOB_FILE_HEADER ('DumpBlob', u32 HeaderSize, u32 BuildNumber), then blobs, each a
    DUMP_BLOB_HEADER followed by PrePad + DataSize + PostPad bytes. The walk stops at the first
    header that is not one (in a pagefile, whatever Windows wrote after the dump) and at a blob
    that runs past the end of the file. Seen in the real triage dump (20 blobs).
    """
    end_of_file = file_size(fh.fileno())
    if start >= end_of_file:
        return 0, 0
    head = read_at(fh, start, 16)
    if head[:8] != DUMP_BLOB_SIGNATURE:
        return 0, 0
    pos = start + max(16, int.from_bytes(head[8:12], "little"))
    blobs = 0
    while True:
        raw = read_at(fh, pos, DUMP_BLOB_HEADER_SIZE)
        if len(raw) < DUMP_BLOB_HEADER_SIZE or int.from_bytes(raw[:4], "little") != DUMP_BLOB_HEADER_SIZE:
            break
        size, pre, post = (int.from_bytes(raw[i:i + 4], "little") for i in (0x14, 0x18, 0x1C))
        end = pos + DUMP_BLOB_HEADER_SIZE + pre + size + post
        if end > end_of_file:
            break  # the blob runs past the end of the file
        blobs += 1
        pos = end
    return blobs, pos - start


def dump_extent(fh: BinaryIO) -> int:
    """Bytes the dump at the start of ``fh`` occupies by its header's account, secondary data included.

    Used to cut a crash dump out of pagefile.sys (Windows writes it at offset 0). Raises
    WincrashError when there is no complete header or the header does not say.
    """
    try:
        dmp = read_dmp(fh)
    except WincrashError:
        raise WincrashError("no complete crash dump header at the start of the file") from None
    if dmp.extent is None:
        raise WincrashError(f"dump type {dmp.dump_type}: the header does not say how large the dump is")
    return dmp.extent
