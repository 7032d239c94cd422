"""Page bitmaps: one bit per 4 KiB page frame, bit ``pfn & 7`` of byte ``pfn >> 3`` (the layout of a DMP's
bitmap, DumpType 5; kdmp-parser and LeechCore read it the same way).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_NON_ZERO = re.compile(rb"[^\x00]+")


def bitmap_bytes(bits: int) -> int:
    """Bytes of a bitmap of ``bits`` bits rounded up to whole qwords (LeechCore walks the bitmap by qwords)."""
    return (bits + 63) // 64 * 8


def set_range(bitmap: bytearray, first: int, count: int) -> None:
    """Set bits [first, first + count) of ``bitmap`` (clipped to its size)."""
    end = min(first + count, len(bitmap) * 8)
    pos = first
    while pos < end and pos & 7:
        bitmap[pos >> 3] |= 1 << (pos & 7)
        pos += 1
    whole = (end - pos) >> 3
    if whole > 0:
        bitmap[pos >> 3:(pos >> 3) + whole] = b"\xff" * whole
        pos += whole * 8
    while pos < end:
        bitmap[pos >> 3] |= 1 << (pos & 7)
        pos += 1


def runs_bitmap(runs: Iterable[tuple[int, int]], bits: int) -> bytearray:
    """A bitmap of ``bits`` bits (rounded up to qwords) with the pages of (first page, page count) ``runs`` set."""
    bitmap = bytearray(bitmap_bytes(bits))
    for base, count in runs:
        set_range(bitmap, base, count)
    return bitmap


def set_ranges(bitmap: bytes) -> Iterator[tuple[int, int]]:
    """(first page, page count) of each run of set bits in ``bitmap``, in ascending order.

    Zero bytes are skipped by a regular-expression scan and 0xFF bytes taken whole, so a sparse
    bitmap of a large guest costs time in its set bits only.
    """
    start = end = -1  # first page and end of the run being built (start -1: none)
    for match in _NON_ZERO.finditer(bitmap):
        lo, hi = match.span()
        if start >= 0 and lo * 8 != end:
            yield start, end - start
            start = -1
        for i in range(lo, hi):
            byte = bitmap[i]
            if byte == 0xFF:
                if start < 0:
                    start = i * 8
                end = i * 8 + 8
                continue
            for bit in range(8):
                pfn = i * 8 + bit
                if byte >> bit & 1:
                    if start < 0:
                        start = pfn
                    end = pfn + 1
                elif start >= 0:
                    yield start, end - start
                    start = -1
    if start >= 0:
        yield start, end - start


def count_set(bitmap: bytes) -> int:
    """How many bits of ``bitmap`` are set."""
    return int.from_bytes(bitmap, "little").bit_count()
