"""Write bitmap dumps (DumpType 5): complete ('FDMP', every page of the runs) and kernel ('SDMP').

Layout (kdmp-parser, LeechCore): DUMP_HEADER64 (0x2000 bytes), a 0x38-byte summary, the bitmap (one bit
per page frame, rounded up to whole qwords, which LeechCore walks), then from the next page boundary
every page whose bit is set, in ascending frame order. Every page of a complete dump's runs is marked
present (readers take a missing page as unreadable, not as zeros); zero pages are not written: the
file offsets are skipped and stay holes, so a sparse file costs disk only for its data. The input is
read once, only where it holds data, and copied in the kernel (dmp/pagecopy.py copy_range); patched
pages are rebuilt over the copy.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import BinaryIO

from wincrash.dmp.header import HeaderFields, build_bitmap_summary, build_header64
from wincrash.dmp.pagecopy import (
    COPY_CHUNK,
    WriteResult,
    copy_range,
    patch_pages,
    patch_written_pages,
    start_writeback,
)
from wincrash.dmp.plan import Patch
from wincrash.formats.dump import (
    BITMAP_FULL_SIGNATURE,
    BITMAP_KERNEL_SIGNATURE,
    DUMP_HEADER64_SIZE,
    DUMP_TYPE_BITMAP,
    PAGE_SIZE,
)
from wincrash.memory.pagebits import bitmap_bytes, runs_bitmap, set_ranges
from wincrash.memory.source import PhysicalSource
from wincrash.windows.kernel_memory import KernelPages

BITMAP_SUMMARY_SIZE = 0x38


def bitmap_layout(runs: Sequence[tuple[int, int]], npresent: int) -> tuple[int, int, int]:
    """(bitmap bits, first page's file offset in bytes, file size in bytes) of a bitmap dump of ``runs``
    holding ``npresent`` pages; the bit count is the highest page + 1 rounded up to a multiple of 64."""
    bits = bitmap_bytes(max(b + c for b, c in runs)) * 8
    return bits, first_page_offset(bits), first_page_offset(bits) + npresent * PAGE_SIZE


def first_page_offset(bits: int) -> int:
    """File offset (bytes) of the first page of a bitmap dump whose bitmap has ``bits`` bits."""
    bitmap_end = DUMP_HEADER64_SIZE + BITMAP_SUMMARY_SIZE + bitmap_bytes(bits)
    return (bitmap_end + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _rank_index(bitmap: bytes, first: int) -> Callable[[int], int | None]:
    """pfn -> file offset of the page in a bitmap dump whose pages start at ``first``, or None when absent."""
    ranges = list(set_ranges(bitmap))
    bases = [b for b, _c in ranges]
    ranks = []
    total = 0
    for _b, c in ranges:
        ranks.append(total)
        total += c

    def offset_of(pfn: int) -> int | None:
        i = bisect.bisect_right(bases, pfn) - 1
        if i < 0 or pfn >= ranges[i][0] + ranges[i][1]:
            return None
        return first + (ranks[i] + pfn - ranges[i][0]) * PAGE_SIZE
    return offset_of


def _write_pages(source: PhysicalSource, header: HeaderFields, patches: Sequence[Patch], bitmap: bytes,
                 signature: bytes, out: BinaryIO, advance: Callable[[int], None]) -> tuple[int, int, tuple[int, ...]]:
    """Write a DumpType 5 dump holding the pages set in ``bitmap``; (file size, pages present, patches lost).

    The data of each run goes to its place with copy_range (in the kernel, zero pages left as holes), then
    the patched pages are rebuilt over what was written.
    """
    bits = len(bitmap) * 8
    first = first_page_offset(bits)
    dst = out.fileno()
    rank = 0
    flushed = first  # file offset up to which writeback was started
    for base, count in set_ranges(bitmap):
        at = first + rank * PAGE_SIZE
        for pa, file_off, n in source.page_extents(base * PAGE_SIZE, (base + count) * PAGE_SIZE):
            copy_range(source.fileno, file_off, dst, at + pa - base * PAGE_SIZE, n)
        advance(count * PAGE_SIZE)
        rank += count
        if at + count * PAGE_SIZE - flushed >= COPY_CHUNK:  # many small runs (kernel dumps)
            start_writeback(dst, flushed, at + count * PAGE_SIZE - flushed)
            flushed = at + count * PAGE_SIZE
    size = first + rank * PAGE_SIZE
    header = replace(header, dump_type=DUMP_TYPE_BITMAP, required_dump_space=size)
    os.pwrite(dst, build_header64(header) + build_bitmap_summary(signature, first, rank, bits) + bitmap, 0)
    os.ftruncate(dst, size)
    lost = patch_written_pages(source, dst, patch_pages(patches), _rank_index(bitmap, first))
    return size, rank, lost


def write_bitmap(source: PhysicalSource, header: HeaderFields, patches: Sequence[Patch], out: BinaryIO,
                 advance: Callable[[int], None]) -> WriteResult:
    """DumpType 5 'FDMP' (complete memory): every page of the header's runs present; ``header`` is not changed."""
    runs = header.runs
    bitmap = bytes(runs_bitmap(runs, max(b + c for b, c in runs)))
    size, present, lost = _write_pages(source, header, patches, bitmap, BITMAP_FULL_SIGNATURE, out, advance)
    return WriteResult(DUMP_TYPE_BITMAP, size, present, present, 0, lost)


def write_kernel(source: PhysicalSource, header: HeaderFields, patches: Sequence[Patch], pages: KernelPages,
                 out: BinaryIO, advance: Callable[[int], None]) -> WriteResult:
    """DumpType 5 'SDMP' (kernel memory): the pages ``pages`` selected (windows/kernel_memory.py)."""
    size, present, lost = _write_pages(source, header, patches, pages.bitmap, BITMAP_KERNEL_SIGNATURE, out,
                                       advance)
    return WriteResult(DUMP_TYPE_BITMAP, size, pages.in_runs, present, pages.in_runs - present, lost)

