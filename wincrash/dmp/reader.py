"""One reader for Microsoft crash dump files (DUMP_HEADER64 / DUMP_HEADER32, MEMORY.DMP).

`read_dmp` reads the header (8 KiB), the bitmap summary or triage sub-header and the secondary
data headers, never the memory, and returns a frozen `DmpFile`: what `info` summarises, what
`grab-pagefile` needs to cut a dump out of pagefile.sys (its extent), and what the memory layer
needs to read a full or bitmap dump as guest-physical memory (`page_map`). Built only on
wincrash.formats; every size the header states is checked against the file's real size before
anything is read or allocated with it. Layouts: ../shared/DESIGN.md §3, kdmp-parser, real dumps.
"""

from __future__ import annotations

import os
import re
from array import array
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
MAX_PFN = 1 << 40  # x64 physical addresses have at most 52 bits (4 PiB): page frames below 2**40
BITMAP_CHUNK = 1 << 20  # bytes of bitmap read at a time (8 Mi pages, 32 GiB of memory)


def read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes at file ``offset`` (fewer at the end of the file), without moving the position.

    The request is clipped to the file's size first, so a corrupt size field (up to 2**64) never
    becomes an allocation.
    """
    fd = fh.fileno()
    size = max(0, min(size, os.fstat(fd).st_size - offset))
    return os.pread(fd, size, offset) if size else b""


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
        size = os.fstat(fh.fileno()).st_size
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
    file_size = os.fstat(fh.fileno()).st_size
    if start >= file_size:
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
        if end > file_size:
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


# --------------------------------------------------------------------------- the bitmap and the page map

def bitmap_counts(fh: BinaryIO, dmp: DmpFile) -> tuple[int, int]:
    """(bits set in the bitmap, of those the ones inside the header's runs), read 1 MiB at a time.

    The caller checks first that ``dmp.bitmap`` lies inside the file (bitmap_end <= size).
    """
    summary = dmp.bitmap
    if summary is None:
        raise WincrashError("not a bitmap dump with a summary header")
    runs = dmp.runs.runs if dmp.runs else ()
    counted = in_runs = 0
    chunk_bits = BITMAP_CHUNK * 8
    for start_bit in range(0, summary.pages, chunk_bits):
        nbits = min(chunk_bits, summary.pages - start_bit)
        value = int.from_bytes(read_at(fh, BITMAP_OFFSET + start_bit // 8, (nbits + 7) // 8), "little")
        value &= (1 << nbits) - 1
        counted += value.bit_count()
        for base, count in runs:
            lo, hi = max(base, start_bit), min(base + count, start_bit + nbits)
            if lo < hi:
                in_runs += ((value >> (lo - start_bit)) & ((1 << (hi - lo)) - 1)).bit_count()
    return counted, in_runs


@dataclass(frozen=True)
class PageMap:
    """Where a full or bitmap dump keeps each guest page: runs of consecutive PFNs stored back to back.

    Parallel arrays, one entry per run, sorted by PFN and merged: pfn[i] (first page frame), pages[i]
    (run length in pages) and offset[i] (file offset in bytes of the run's first page). A run may
    extend past the end of a truncated file; `missing` names the guest-physical [start, end) byte
    ranges the header promises but the file does not hold (for a bitmap dump, from the first page
    the file lacks to the end of the bitmap).
    """

    pfn: array
    pages: array
    offset: array
    missing: tuple[tuple[int, int], ...]


def page_map(fh: BinaryIO, dmp: DmpFile) -> PageMap:
    """The PFN -> file offset map of a 64-bit full (DumpType 1) or bitmap (5, 6) dump.

    Time linear in the bitmap's size, memory bounded by the pages the file holds. Raises
    WincrashError for other dump types and for a header whose sizes the file cannot hold.
    """
    if dmp.runs is None:
        raise WincrashError("this dump has no physical memory runs (triage dump?): nothing to convert")
    if not dmp.is64 or dmp.dump_type not in (DumpType.FULL, *BITMAP_TYPES):
        raise WincrashError(f"DumpType {dmp.dump_type} cannot be converted (full or bitmap dumps only)")
    if dmp.dump_type == DumpType.FULL:
        return _full_page_map(dmp)
    summary = dmp.bitmap
    if summary is None:
        raise WincrashError(f"{dmp.bitmap_problem}: corrupt dump")
    if summary.bitmap_end > dmp.size:
        raise WincrashError(f"bitmap of {summary.pages:,} pages runs past the end of the file: corrupt dump "
                            f"(the bitmap needs {summary.bitmap_bytes:,} bytes, the file has {dmp.size:,})")
    if summary.first_page < summary.bitmap_end:
        raise WincrashError(f"FirstPage 0x{summary.first_page:x} lies inside the bitmap (ends at "
                            f"0x{summary.bitmap_end:x}): corrupt dump")
    return _bitmap_page_map(fh, summary, dmp.size)


def _full_page_map(dmp: DmpFile) -> PageMap:
    pfns, pages, offsets = array("Q"), array("Q"), array("Q")
    missing = []
    offset = DUMP_HEADER64_SIZE
    for base, count in dmp.runs.runs if dmp.runs else ():
        if base + count > MAX_PFN or offset + count * PAGE_SIZE > MAX_PFN * PAGE_SIZE:
            raise WincrashError(f"run of {count:,} pages at page 0x{base:x} lies beyond any physical address "
                                "(x64 has 52 address bits): corrupt dump")
        pfns.append(base)
        pages.append(count)
        offsets.append(offset)
        present = max(0, min(count * PAGE_SIZE, dmp.size - offset))
        if present < count * PAGE_SIZE:
            missing.append((base * PAGE_SIZE + present, (base + count) * PAGE_SIZE))
        offset += count * PAGE_SIZE
    return PageMap(pfns, pages, offsets, tuple(missing))


# For each byte value, its runs of set bits as (first bit, length), LSB first (bit 0 is the lowest PFN).
BYTE_RUNS = tuple(tuple((m.start(), m.end() - m.start()) for m in re.finditer("1+", format(value, "08b")[::-1]))
                  for value in range(256))


def _bitmap_page_map(fh: BinaryIO, summary: BitmapSummary, file_size: int) -> PageMap:
    """Decode the bitmap in one pass: zero bytes are skipped and 0xFF stretches taken whole by the
    regex engine, mixed bytes go through a 256-entry run table; stops where the file's pages end."""
    starts, lengths, offsets = array("Q"), array("Q"), array("Q")
    held = max(0, file_size - summary.first_page)
    pages_in_file, partial = divmod(held, PAGE_SIZE)  # whole pages the file holds, bytes of one more
    total_bytes = summary.bitmap_bytes
    tail_bits = summary.pages % 8
    seen = 0  # present pages decoded so far, closed runs and the open one
    run_start = run_end = -1  # the open run of consecutive present PFNs
    for chunk_at in range(0, total_bytes, BITMAP_CHUNK):
        chunk = bytearray(read_at(fh, BITMAP_OFFSET + chunk_at, min(BITMAP_CHUNK, total_bytes - chunk_at)))
        if chunk_at + len(chunk) == total_bytes and tail_bits:
            chunk[-1] &= (1 << tail_bits) - 1  # bits past Pages are not pages
        for match in _SET_BYTES.finditer(chunk):
            at = match.start()
            byte = chunk[at]
            base = (chunk_at + at) * 8
            for rel, length in (((0, 8 * (match.end() - at)),) if byte == 0xFF else BYTE_RUNS[byte]):
                pfn = base + rel
                if pfn != run_end:
                    if run_end >= 0:
                        starts.append(run_start)
                        lengths.append(run_end - run_start)
                        offsets.append(summary.first_page + (seen - (run_end - run_start)) * PAGE_SIZE)
                    run_start = pfn
                run_end = pfn + length
                seen += length
                if seen > pages_in_file:  # the file ends inside this run
                    run_end -= seen - pages_in_file
                    seen = pages_in_file
                    missing = ((run_end * PAGE_SIZE + partial, summary.pages * PAGE_SIZE),)
                    if partial:
                        run_end += 1  # a partly present page: its tail reads as zeros
                        seen += 1
                    if run_end > run_start:
                        starts.append(run_start)
                        lengths.append(run_end - run_start)
                        offsets.append(summary.first_page + (seen - (run_end - run_start)) * PAGE_SIZE)
                    return PageMap(starts, lengths, offsets, missing)
    if run_end >= 0:
        starts.append(run_start)
        lengths.append(run_end - run_start)
        offsets.append(summary.first_page + (seen - (run_end - run_start)) * PAGE_SIZE)
    return PageMap(starts, lengths, offsets, ())


_SET_BYTES = re.compile(rb"\xff+|[^\x00\xff]")  # a stretch of full bytes, or one mixed byte
