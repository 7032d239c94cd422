"""What the DMP writers share: the write result, kernel-side file copies, and memory patches by page.

Patches are (guest-physical address, bytes) pairs (dmp/plan.py); writers apply them to the pages they
copy, so the input is never changed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass

from wincrash.dmp.plan import Patch
from wincrash.formats.dump import PAGE_SIZE

COPY_CHUNK = 64 << 20


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


def apply_edits(page: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    """``page`` with each (offset, bytes) edit written over it."""
    buf = bytearray(page)
    for off, data in edits:
        buf[off:off + len(data)] = data
    return bytes(buf)
