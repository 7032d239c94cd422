"""Write DMP files from a physical memory source: full (DumpType 1) here, bitmap and kernel (DumpType 5
'FDMP' / 'SDMP') in dmp/bitmap_writer.py.

Bulk data never passes through Python when it does not have to: a full dump's run ranges are mapped
to input file offsets and copied with os.copy_file_range (holes in a sparse input are skipped with
SEEK_DATA, leaving holes in the output). Small patches (the decoded KDBG, the CPU contexts) are
written over the copied pages afterwards.

write_dump() carries out a DumpPlan (dmp/plan.py); nothing it is given is changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import BinaryIO

from wincrash.dmp.bitmap_writer import bitmap_layout, write_bitmap, write_kernel
from wincrash.dmp.header import HeaderFields, build_header64
from wincrash.dmp.pagecopy import WriteResult, copy_range, patch_pages, patch_written_pages
from wincrash.dmp.plan import DumpPlan, Patch
from wincrash.formats.dump import DUMP_HEADER64_SIZE, DUMP_TYPE_FULL, PAGE_SIZE
from wincrash.memory.source import PhysicalSource

FORMATS = ("full", "bitmap", "kernel")

__all__ = ["FORMATS", "WriteResult", "bytes_needed", "write_dump", "write_full"]


def _run_index(runs: Sequence[tuple[int, int]]) -> Callable[[int], int | None]:
    """pfn -> index of the page in the dump's page sequence (runs back to back), or None."""
    starts = []
    total = 0
    for base, count in runs:
        starts.append((base, count, total))
        total += count

    def index(pfn: int) -> int | None:
        for base, count, first in starts:
            if base <= pfn < base + count:
                return first + pfn - base
        return None
    return index


def data_bytes_in_runs(source: PhysicalSource, runs: Sequence[tuple[int, int]]) -> int:
    """How many bytes of the runs hold data in the input (what a sparse output will occupy)."""
    total = 0
    for base, count in runs:
        for _pa, length, off in source.pieces(base * PAGE_SIZE, (base + count) * PAGE_SIZE):
            if off is not None:
                total += sum(n for _o, n in source.data_extents(off, length))
    return total


def bytes_needed(source: PhysicalSource, plan: DumpPlan, fmt: str) -> int:
    """At most how many bytes the output of ``plan`` in format ``fmt`` occupies on disk.

    Full and bitmap: the input's data inside the runs (holes stay holes), plus the patched pages and
    the headers (and the bitmap). Kernel: every kept page plus the headers and the bitmap.
    """
    runs = plan.header.runs
    if fmt == "kernel" and plan.kernel_pages is not None:
        return bitmap_layout(runs, plan.kernel_pages.kept)[2]
    needed = data_bytes_in_runs(source, runs) + len(plan.patches) * PAGE_SIZE
    return (DUMP_HEADER64_SIZE if fmt == "full" else bitmap_layout(runs, 0)[1]) + needed


def write_dump(source: PhysicalSource, plan: DumpPlan, fmt: str, out: BinaryIO,
               advance: Callable[[int], None]) -> WriteResult:
    """Write ``plan`` over ``source``'s memory to ``out`` as a full (DumpType 1), complete bitmap or kernel
    (DumpType 5) dump.

    ``advance(n)`` is called with the bytes of pages done; ValueError for an unknown ``fmt`` or a kernel
    dump whose plan selected no pages (plan_dump(..., fmt="kernel") does).
    """
    if fmt == "full":
        return write_full(source, plan.header, plan.patches, out, advance)
    if fmt == "bitmap":
        return write_bitmap(source, plan.header, plan.patches, out, advance)
    if fmt == "kernel" and plan.kernel_pages is not None:
        return write_kernel(source, plan.header, plan.patches, plan.kernel_pages, out, advance)
    raise ValueError(f"cannot write a {fmt!r} dump of this plan: use {' or '.join(FORMATS)} (kernel needs a "
                     "plan made with fmt='kernel')")


def write_full(source: PhysicalSource, header: HeaderFields, patches: Sequence[Patch], out: BinaryIO,
               advance: Callable[[int], None]) -> WriteResult:
    """DumpType 1: the header, then every page of every run, in run order; ``header`` is not changed."""
    runs = header.runs
    pages = sum(c for _, c in runs)
    header = replace(header, dump_type=DUMP_TYPE_FULL, required_dump_space=DUMP_HEADER64_SIZE + pages * PAGE_SIZE)
    out.write(build_header64(header))
    out.flush()
    dst = out.fileno()
    dst_off = DUMP_HEADER64_SIZE
    for base, count in runs:
        for _pa, length, off in source.pieces(base * PAGE_SIZE, (base + count) * PAGE_SIZE):
            if off is not None:
                for data_off, n in source.data_extents(off, length):
                    copy_range(source.fileno, data_off, dst, dst_off + (data_off - off), n)
            advance(length)
            dst_off += length
    os.ftruncate(dst, header.required_dump_space)
    index = _run_index(runs)

    def offset_of(pfn: int) -> int | None:
        i = index(pfn)
        return None if i is None else DUMP_HEADER64_SIZE + i * PAGE_SIZE
    lost = patch_written_pages(source, dst, patch_pages(patches), offset_of)
    return WriteResult(DUMP_TYPE_FULL, header.required_dump_space, pages, pages, 0, lost)
