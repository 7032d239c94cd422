"""Write full (DumpType 1) and bitmap (DumpType 5 'FDMP') dumps from a physical memory source.

Bulk data never passes through Python when it does not have to: run ranges are mapped to input
file offsets and copied with os.copy_file_range (holes in a sparse input are skipped with
SEEK_DATA, leaving holes in the output). Small patches (the decoded KDBG, the CPU contexts) are
written over the copied pages afterwards; for bitmap dumps, zero pages are decided on the final
image, so a patched page is always present.

write_dump() carries out a DumpPlan (dmp/plan.py); nothing it is given is changed.
"""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO

from wincrash.dmp.header import HeaderFields, build_bitmap_summary, build_header64
from wincrash.dmp.plan import DumpPlan, Patch
from wincrash.formats.dump import BITMAP_FULL_SIGNATURE, DUMP_HEADER64_SIZE, DUMP_TYPE_BITMAP, DUMP_TYPE_FULL, PAGE_SIZE
from wincrash.memory.source import PhysicalSource

COPY_CHUNK = 64 << 20
SCAN_CHUNK = 4 << 20
ZERO_PAGE = bytes(PAGE_SIZE)
FORMATS = ("full", "bitmap")
BITMAP_SUMMARY_SIZE = 0x38


@dataclass(frozen=True)
class WriteResult:
    """What a writer wrote: DumpType, file size in bytes, pages (4 KiB) in the runs / in the file / left
    out as zero (bitmap), and the physical addresses of patches outside every run (not in the dump)."""

    dump_type: int
    file_size: int
    pages_in_runs: int
    pages_written: int
    pages_left_out: int = 0
    patches_lost: tuple[int, ...] = ()


def copy_range(src_fd: int, src_off: int, dst_fd: int, dst_off: int, length: int) -> None:
    """Copy bytes file to file in the kernel (copy_file_range), buffered when that is not possible."""
    while length > 0:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(length, COPY_CHUNK), src_off, dst_off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            n = 0
        if n == 0:  # not supported here, or end of input: fall back to a buffered copy
            data = os.pread(src_fd, min(length, COPY_CHUNK), src_off)
            if not data:
                return  # input ends early (truncated): the rest stays a hole (zeros)
            os.pwrite(dst_fd, data, dst_off)
            n = len(data)
        src_off += n
        dst_off += n
        length -= n


def patch_pages(patches: Iterable[Patch]) -> dict[int, list[tuple[int, bytes]]]:
    """Split (pa, bytes) patches by page frame: {pfn: [(offset in page, bytes)]}."""
    pages: dict[int, list[tuple[int, bytes]]] = {}
    for pa, data in patches:
        pos = 0
        while pos < len(data):
            page_off = (pa + pos) % PAGE_SIZE
            n = min(len(data) - pos, PAGE_SIZE - page_off)
            pages.setdefault((pa + pos) // PAGE_SIZE, []).append((page_off, data[pos:pos + n]))
            pos += n
    return pages


def _apply(page: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    """``page`` with each (offset, bytes) edit written over it."""
    buf = bytearray(page)
    for off, data in edits:
        buf[off:off + len(data)] = data
    return bytes(buf)


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

    The input's data inside the runs (holes stay holes in a full dump and are left out of a bitmap
    dump), plus the patched pages and the headers (and the bitmap).
    """
    runs = plan.header.runs
    needed = data_bytes_in_runs(source, runs) + len(plan.patches) * PAGE_SIZE
    return (DUMP_HEADER64_SIZE if fmt == "full" else bitmap_layout(runs, 0)[1]) + needed


def write_dump(source: PhysicalSource, plan: DumpPlan, fmt: str, out: BinaryIO,
               advance: Callable[[int], None]) -> WriteResult:
    """Write ``plan`` over ``source``'s memory to ``out`` as a full (DumpType 1) or bitmap (DumpType 5) dump.

    ``advance(n)`` is called with the bytes of runs done; ValueError for an unknown ``fmt``.
    """
    if fmt == "full":
        return write_full(source, plan.header, plan.patches, out, advance)
    if fmt == "bitmap":
        return write_bitmap(source, plan.header, plan.patches, out, advance)
    raise ValueError(f"unknown dump format {fmt!r}: use {' or '.join(FORMATS)}")


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
    lost = []
    index = _run_index(runs)
    for pfn, edits in patch_pages(patches).items():
        i = index(pfn)
        if i is None:
            lost.append(pfn * PAGE_SIZE)
            continue
        at = DUMP_HEADER64_SIZE + i * PAGE_SIZE
        os.pwrite(dst, _apply(os.pread(dst, PAGE_SIZE, at).ljust(PAGE_SIZE, b"\0"), edits), at)
    return WriteResult(DUMP_TYPE_FULL, header.required_dump_space, pages, pages, 0, tuple(lost))


def bitmap_layout(runs: Sequence[tuple[int, int]], npresent: int) -> tuple[int, int, int]:
    """(total bitmap bits, first page's file offset in bytes, file size in bytes) of a bitmap dump."""
    bits = max(b + c for b, c in runs)
    bitmap_end = DUMP_HEADER64_SIZE + BITMAP_SUMMARY_SIZE + (bits + 7) // 8
    first = (bitmap_end + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    return bits, first, first + npresent * PAGE_SIZE


def _bitmap_sources(source: PhysicalSource, base: int, count: int,
                    patched: dict[int, list[tuple[int, bytes]]]) -> list[tuple[int, int | None, int]]:
    """Page-aligned (pa, file offset or None, length) pieces of one run that may hold non-zero pages.

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


def _write_present(dst: int, data: memoryview, pa: int, edits: dict[int, list[tuple[int, bytes]]],
                   bitmap: bytearray, offset: int) -> int:
    """Write the non-zero pages of ``data`` (guest-physical ``pa``) at ``offset``; mark them; return how many.

    Runs of present pages go to the kernel as slices of the read buffer (pwritev), so page data is
    never copied in Python; only patched pages are rebuilt.
    """
    buffers: list[memoryview | bytes] = []
    run_start = None
    count = 0
    for p in range(0, len(data), PAGE_SIZE):
        pfn = (pa + p) // PAGE_SIZE
        patched = edits.get(pfn)
        if patched is None and data[p:p + PAGE_SIZE] != ZERO_PAGE:
            if run_start is None:
                run_start = p
        else:
            if run_start is not None:
                buffers.append(data[run_start:p])
                run_start = None
            if patched is None:
                continue
            buffers.append(_apply(bytes(data[p:p + PAGE_SIZE]), patched))
        bitmap[pfn >> 3] |= 1 << (pfn & 7)
        count += 1
    if run_start is not None:
        buffers.append(data[run_start:])
    for i in range(0, len(buffers), 512):  # IOV_MAX is 1024 on Linux
        group = buffers[i:i + 512]
        written = os.pwritev(dst, group, offset)
        if written != sum(len(b) for b in group):
            raise OSError(errno.EIO, "short write")
        offset += written
    return count


def write_bitmap(source: PhysicalSource, header: HeaderFields, patches: Sequence[Patch], out: BinaryIO,
                 advance: Callable[[int], None]) -> WriteResult:
    """DumpType 5 ('FDMP') in one pass over the input; ``header`` is not changed.

    The first page's file offset depends only on the bitmap's size (highest PFN + 1), so present
    pages are written as they are found, each input byte read once; the header, summary and bitmap
    are written last, when the count of present pages is known. Zero pages are decided on the final
    image: a patched page is always present.
    """
    runs = sorted(header.runs)
    bits, first, _ = bitmap_layout(runs, 0)
    bitmap = bytearray((bits + 7) // 8)
    edits = patch_pages(patches)
    dst = out.fileno()
    written = 0
    for base, count in runs:
        for pa, file_off, n in _bitmap_sources(source, base, count, edits):
            for chunk_at in range(0, n, SCAN_CHUNK):
                size = min(SCAN_CHUNK, n - chunk_at)
                data = os.pread(source.fileno, size, file_off + chunk_at) if file_off is not None else bytes(size)
                written += _write_present(dst, memoryview(data.ljust(size, b"\0")), pa + chunk_at, edits, bitmap,
                                          first + written * PAGE_SIZE)
        advance(count * PAGE_SIZE)
    size = first + written * PAGE_SIZE
    header = replace(header, dump_type=DUMP_TYPE_BITMAP, required_dump_space=size)
    os.pwrite(dst, build_header64(header) + build_bitmap_summary(BITMAP_FULL_SIGNATURE, first, written, bits)
              + bytes(bitmap), 0)
    os.ftruncate(dst, size)
    total = sum(c for _, c in runs)
    lost = tuple(pfn * PAGE_SIZE for pfn in edits if not any(b <= pfn < b + c for b, c in runs))
    return WriteResult(DUMP_TYPE_BITMAP, size, total, written, total - written, lost)
