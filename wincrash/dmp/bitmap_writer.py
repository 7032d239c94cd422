"""Write bitmap dumps (DumpType 5): complete ('FDMP', every page of the runs) and kernel ('SDMP').

Layout (kdmp-parser, LeechCore): DUMP_HEADER64 (0x2000 bytes), a 0x38-byte summary, the bitmap (one bit
per page frame, rounded up to whole qwords, which LeechCore walks), then from the next page boundary
every page whose bit is set, in ascending frame order. Every page of a complete dump's runs is marked
present (readers take a missing page as unreadable, not as zeros); zero pages are not written: the
file offsets are skipped and stay holes, so a sparse file costs disk only for its data. The input is
read once, in chunks, only where it holds data; patched pages are rebuilt, everything else goes to
the kernel as slices of the read buffer (pwritev).
"""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import BinaryIO

from wincrash.dmp.header import HeaderFields, build_bitmap_summary, build_header64
from wincrash.dmp.pagecopy import WriteResult, apply_edits, patch_pages
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

SCAN_CHUNK = 4 << 20
ZERO_PAGE = bytes(PAGE_SIZE)
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


def _sources(source: PhysicalSource, base: int, count: int,
             patched: dict[int, list[tuple[int, bytes]]]) -> list[tuple[int, int | None, int]]:
    """Page-aligned (pa, file offset or None, length) pieces of a range of pages that may hold non-zero pages.

    Data extents of the input, plus single zero pages that a patch makes non-zero, in address order.
    """
    pieces: list[tuple[int, int | None, int]] = list(source.page_extents(base * PAGE_SIZE, (base + count) * PAGE_SIZE))
    starts = [pa for pa, _o, _n in pieces]
    for pfn in patched:
        if not base <= pfn < base + count:
            continue
        i = bisect.bisect_right(starts, pfn * PAGE_SIZE) - 1
        if i >= 0 and pieces[i][0] <= pfn * PAGE_SIZE < pieces[i][0] + pieces[i][2]:
            continue
        pieces.append((pfn * PAGE_SIZE, None, PAGE_SIZE))
    pieces.sort()
    return pieces


def _write_nonzero(dst: int, data: memoryview, pa: int, edits: dict[int, list[tuple[int, bytes]]],
                   offset: int) -> int:
    """Write the non-zero (or patched) pages of ``data`` (guest-physical ``pa``, file offset ``offset``) at
    their own offsets, leaving zero pages as holes; return how many pages were written.

    Contiguous pages go to the kernel together (pwritev of slices of ``data``: no copy in Python);
    only patched pages are rebuilt.
    """
    groups: list[tuple[int, list[memoryview | bytes]]] = []  # (offset in data, one buffer per page)
    end = -1
    for p in range(0, len(data), PAGE_SIZE):
        patched = edits.get((pa + p) // PAGE_SIZE)
        if patched is not None:
            page: memoryview | bytes = apply_edits(bytes(data[p:p + PAGE_SIZE]), patched)
        elif data[p:p + PAGE_SIZE] != ZERO_PAGE:
            page = data[p:p + PAGE_SIZE]
        else:
            continue
        if p == end:
            groups[-1][1].append(page)
        else:
            groups.append((p, [page]))
        end = p + PAGE_SIZE
    for start, buffers in groups:
        at = offset + start
        for i in range(0, len(buffers), 512):  # IOV_MAX is 1024 on Linux
            group = buffers[i:i + 512]
            written = os.pwritev(dst, group, at)
            if written != sum(len(b) for b in group):
                raise OSError(errno.EIO, "short write")
            at += written
    return sum(len(b) for _s, b in groups)


def _write_pages(source: PhysicalSource, header: HeaderFields, patches: Sequence[Patch], bitmap: bytes,
                 signature: bytes, out: BinaryIO, advance: Callable[[int], None]) -> tuple[int, int, tuple[int, ...]]:
    """Write a DumpType 5 dump holding the pages set in ``bitmap``; (file size, pages present, patches lost)."""
    bits = len(bitmap) * 8
    first = first_page_offset(bits)
    edits = patch_pages(patches)
    dst = out.fileno()
    rank = 0
    for base, count in set_ranges(bitmap):
        at = first + rank * PAGE_SIZE
        for pa, file_off, n in _sources(source, base, count, edits):
            for chunk_at in range(0, n, SCAN_CHUNK):
                size = min(SCAN_CHUNK, n - chunk_at)
                data = os.pread(source.fileno, size, file_off + chunk_at) if file_off is not None else bytes(size)
                _write_nonzero(dst, memoryview(data.ljust(size, b"\0")), pa + chunk_at, edits,
                               at + pa + chunk_at - base * PAGE_SIZE)
        advance(count * PAGE_SIZE)
        rank += count
    size = first + rank * PAGE_SIZE
    header = replace(header, dump_type=DUMP_TYPE_BITMAP, required_dump_space=size)
    os.pwrite(dst, build_header64(header) + build_bitmap_summary(signature, first, rank, bits) + bitmap, 0)
    os.ftruncate(dst, size)
    lost = tuple(pfn * PAGE_SIZE for pfn in edits if not (pfn < bits and bitmap[pfn >> 3] >> (pfn & 7) & 1))
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

