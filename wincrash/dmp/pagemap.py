"""Where a full or bitmap crash dump keeps each guest page: the PFN -> file offset page map, and bitmap counts.

Built on dmp/reader.py's DmpFile (header values already checked against the file's size). Bitmap
decoding takes time linear in the bitmap's size and memory bounded by the pages the file holds;
the bitmap is LSB first, present pages follow in ascending PFN order from FirstPage (DESIGN §3).
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from typing import BinaryIO

from wincrash.dmp.reader import BITMAP_OFFSET, BITMAP_TYPES, BitmapSummary, DmpFile, read_at
from wincrash.errors import WincrashError
from wincrash.formats.dump import DUMP_HEADER64_SIZE, DUMP_TYPE_NAMES, PAGE_SIZE, DumpType

MAX_PFN = 1 << 40  # x64 physical addresses have at most 52 bits (4 PiB): page frames below 2**40
BITMAP_CHUNK = 1 << 20  # bytes of bitmap read at a time (8 Mi pages, 32 GiB of memory)


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
        kind = DUMP_TYPE_NAMES.get(dmp.dump_type, "unknown")
        raise WincrashError(f"DumpType {dmp.dump_type} ({kind}) cannot be converted (full or bitmap dumps only)")
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


def _bitmap_page_map(fh: BinaryIO, summary: BitmapSummary, end_of_file: int) -> PageMap:
    """Decode the bitmap in one pass: zero bytes are skipped and 0xFF stretches taken whole by the
    regex engine, mixed bytes go through a 256-entry run table; stops where the file's pages end."""
    starts, lengths, offsets = array("Q"), array("Q"), array("Q")
    held = max(0, end_of_file - summary.first_page)
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
