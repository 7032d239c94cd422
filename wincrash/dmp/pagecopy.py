"""What the DMP writers share: the write result, kernel-side file copies that leave zero pages as holes,
early writeback, zero-page detection, and memory patches by page.

Patches are (guest-physical address, bytes) pairs (dmp/plan.py); writers apply them to the pages they
copy, so the input is never changed.

Speed (scripts/bench_convert.py): a dump is fsynced before it is renamed, so the copy loops start the
writeback of every chunk as soon as it is written (Linux sync_file_range(SYNC_FILE_RANGE_WRITE), which
does not wait) and the final fsync finds almost nothing left: on a 4 GiB dense ELF the fsync went from
1.3-1.9 s to 0.01-0.04 s and the copy plus fsync from 3.5-4.2 s to 2.4-3.0 s (measured with 8 and 64 MiB
chunks, with and without waiting for older chunks: not waiting was fastest).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from wincrash.dmp.plan import Patch
from wincrash.formats.dump import PAGE_SIZE
from wincrash.memory.source import PhysicalSource

COPY_CHUNK = 8 << 20
SMALL_COPY = 256 << 10  # copies up to this size are read and written, not mapped
ZERO_PAGE = bytes(PAGE_SIZE)
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages in the range, do not wait


@dataclass(frozen=True)
class WriteResult:
    """What a writer wrote: DumpType, file size in bytes, pages (4 KiB) in the runs / in the file / of the
    runs not in the file (kernel dumps), and the physical addresses of patches outside every page the
    dump holds (not in the dump)."""

    dump_type: int
    file_size: int
    pages_in_runs: int
    pages_written: int
    pages_left_out: int = 0
    patches_lost: tuple[int, ...] = ()


def _load_sync_file_range() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing file bytes [offset, offset+length) to disk now, without waiting.

    Linux sync_file_range(2) with SYNC_FILE_RANGE_WRITE; it does not make the data durable (the fsync
    before the rename does), it only spreads the writing over the copy. Where it is missing or refused
    (not Linux, a filesystem without it) nothing happens.
    """
    global _sync_file_range
    if _sync_file_range is not None and length > 0 and _sync_file_range(fd, offset, length,
                                                                         _SYNC_FILE_RANGE_WRITE) != 0:
        _sync_file_range = None  # ENOSYS / ESPIPE / EINVAL: not available here, stop asking


def zero_pages(view: memoryview) -> list[int]:
    """Indices of the whole 4 KiB pages of ``view`` (a byte buffer) that are all zero, ascending.

    Fast for data: only pages whose first 8 bytes are zero are compared in full (one strided read of
    the first qword of every page, in C).
    """
    n = len(view) // PAGE_SIZE
    if n == 0:
        return []
    firsts = view[:n * PAGE_SIZE].cast("B").cast("Q")[::PAGE_SIZE // 8].tolist()
    if 0 not in firsts:
        return []
    return [i for i, v in enumerate(firsts)
            if v == 0 and view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE].tobytes() == ZERO_PAGE]


def nonzero_spans(view: memoryview, base: int) -> list[tuple[int, int]]:
    """(start, end) byte ranges of ``view`` that are not whole zero pages, where pages start at byte
    ``base`` of the view (0 <= base < 4096; bytes before ``base`` and after the last whole page count
    as data)."""
    zeros = zero_pages(view[base:])
    spans: list[tuple[int, int]] = []
    pos = 0
    for i in zeros:
        at = base + i * PAGE_SIZE
        if at > pos:
            spans.append((pos, at))
        pos = at + PAGE_SIZE
    if pos < len(view):
        spans.append((pos, len(view)))
    return spans


def _data_spans(src_fd: int, src_off: int, length: int, file_size: int, dst_off: int) -> list[tuple[int, int]]:
    """(start, end) offsets relative to ``src_off`` of the bytes to copy: not past the input's end, and not
    the whole destination pages (page grid of ``dst_off``) that are zero in the input.

    The input is looked at through a read-only mapping of the page cache (no copy into Python); the bytes
    are then copied in the kernel, so each input page comes from disk at most once.
    """
    length = min(length, max(0, file_size - src_off))
    if length == 0:
        return []
    lo = src_off - src_off % mmap.ALLOCATIONGRANULARITY
    try:
        m = mmap.mmap(src_fd, src_off + length - lo, prot=mmap.PROT_READ, offset=lo)
    except (OSError, ValueError):
        return [(0, length)]
    try:
        with memoryview(m) as whole, whole[src_off - lo:] as view:
            return nonzero_spans(view, -dst_off % PAGE_SIZE)
    finally:
        # An interrupt (Ctrl-C, SIGTERM) raised inside nonzero_spans leaves slices of the mapping alive in its
        # traceback: close() then raises BufferError, which would replace the interrupt. The mapping is
        # unmapped when the last slice goes, so only that error is let pass.
        with contextlib.suppress(BufferError):
            m.close()


def copy_range(src_fd: int, src_off: int, dst_fd: int, dst_off: int, length: int) -> None:
    """Copy ``length`` bytes from ``src_fd`` at ``src_off`` to ``dst_fd`` at ``dst_off`` (a new file: what is
    not written stays a hole): in the kernel (copy_file_range), 8 MiB at a time, skipping whole destination
    pages that are zero in the input (they stay holes, i.e. zeros) and what lies past the input's end
    (truncated input), starting each chunk's writeback at once (start_writeback). OSError from the copy.
    """
    if length <= SMALL_COPY:  # scattered pages (kernel dumps): one read, no mapping
        data = os.pread(src_fd, length, src_off)
        with memoryview(data) as view:
            for start, end in nonzero_spans(view, -dst_off % PAGE_SIZE):
                _pwrite_all(dst_fd, view[start:end], dst_off + start)
        return
    file_size = os.fstat(src_fd).st_size
    while length > 0:
        n = min(length, COPY_CHUNK)
        for start, end in _data_spans(src_fd, src_off, n, file_size, dst_off):
            _copy(src_fd, src_off + start, dst_fd, dst_off + start, end - start)
        start_writeback(dst_fd, dst_off, n)
        src_off += n
        dst_off += n
        length -= n


def _pwrite_all(fd: int, view: memoryview, at: int) -> None:
    while len(view):
        n = os.pwrite(fd, view, at)
        at, view = at + n, view[n:]


def _copy(src_fd: int, src_off: int, dst_fd: int, dst_off: int, length: int) -> None:
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


def patch_written_pages(source: PhysicalSource, dst_fd: int, pages: dict[int, list[tuple[int, bytes]]],
                        offset_of: Callable[[int], int | None]) -> tuple[int, ...]:
    """Write each patched page (``pages`` from patch_pages) over the output at ``offset_of(pfn)``: the page
    as ``source`` holds it (zeros where it holds nothing) with its edits applied; the output is only
    written (it may be open write-only). Returns the physical addresses of the pages the output does not
    hold (offset_of gave None), ascending."""
    lost = []
    for pfn, edits in sorted(pages.items()):
        at = offset_of(pfn)
        if at is None:
            lost.append(pfn * PAGE_SIZE)
            continue
        os.pwrite(dst_fd, apply_edits(source.read(pfn * PAGE_SIZE, PAGE_SIZE), edits), at)
    return tuple(lost)


def apply_edits(page: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    """``page`` with each (offset, bytes) edit written over it."""
    buf = bytearray(page)
    for off, data in edits:
        buf[off:off + len(data)] = data
    return bytes(buf)
