"""dmp/pagecopy.py: kernel-side copies leave whole zero pages as holes and copy everything else exactly."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from wincrash.dmp.pagecopy import COPY_CHUNK, SMALL_COPY, copy_range, nonzero_spans, start_writeback, zero_pages

PAGE = 4096


def _pages(layout: str, seed: int = 1) -> bytes:
    """One page per character: 'd' random data, 'z' zeros, 'e' zeros but for the last byte."""
    rng = random.Random(seed)
    out = bytearray()
    for c in layout:
        page = bytearray(rng.randbytes(PAGE)) if c == "d" else bytearray(PAGE)
        if c == "d":
            page[:8] = b"\x01" * 8  # never a zero first qword
        if c == "e":
            page[-1] = 7
        out += page
    return bytes(out)


def test_zero_pages_checks_whole_pages() -> None:
    data = memoryview(_pages("dzezd"))
    assert zero_pages(data) == [1, 3]  # 'e' has a zero first qword but is not zero
    assert zero_pages(memoryview(b"")) == []
    # Pages start 100 bytes in: the head and the partial tail count as data.
    spans = nonzero_spans(memoryview(bytes(100) + _pages("zdz") + bytes(10)), 100)
    assert spans == [(0, 100), (100 + PAGE, 100 + 2 * PAGE), (100 + 3 * PAGE, 100 + 3 * PAGE + 10)]


@pytest.mark.parametrize("pages", [8, (SMALL_COPY // PAGE) + 8, (COPY_CHUNK // PAGE) + 300])
def test_copy_range_holes_and_bytes(tmp_path: Path, pages: int) -> None:
    """A misaligned source (as QEMU's ELF stores pages) into a page-aligned output: same bytes, holes for zeros."""
    rng = random.Random(pages)
    layout = "".join(rng.choice("dzzze") for _ in range(pages))
    body = _pages(layout, pages)
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(b"H" * 0x2A0 + body)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        copy_range(fi.fileno(), 0x2A0, fo.fileno(), 2 * PAGE, len(body))
        os.ftruncate(fo.fileno(), 2 * PAGE + len(body))
        start_writeback(fo.fileno(), 0, 2 * PAGE + len(body))
    out = dst.read_bytes()
    assert out[2 * PAGE:] == body and out[:2 * PAGE] == bytes(2 * PAGE)
    allocated = dst.stat().st_blocks * 512
    data_pages = layout.count("d") + layout.count("e")
    assert allocated <= (data_pages + 16) * PAGE, (allocated, data_pages)  # zero pages took no blocks


def test_copy_range_past_the_input_end_leaves_zeros(tmp_path: Path) -> None:
    body = _pages("dd")
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(body)
    length = 2 * COPY_CHUNK  # the input is truncated: far less than the range asked for
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        copy_range(fi.fileno(), 0, fo.fileno(), 0, length)
        os.ftruncate(fo.fileno(), length)
    out = dst.read_bytes()
    assert out[:len(body)] == body and out[len(body):] == bytes(length - len(body))
