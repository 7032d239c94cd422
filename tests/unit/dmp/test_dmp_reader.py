"""wincrash.dmp.reader: the one DMP reader (header, runs, extent, page map), on dumps built by our header writer
and on the corrupt dumps of ../shared/samples/cases/robustness."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from helpers import SHARED_SAMPLES, dmp_header64, pfn_page, run_wincrash, sample_file

from wincrash.dmp import pagemap
from wincrash.dmp.header import build_bitmap_summary
from wincrash.dmp.pagemap import page_map
from wincrash.dmp.reader import dump_extent, read_dmp
from wincrash.errors import WincrashError
from wincrash.formats.dump import DUMP_HEADER64_SIZE, DUMP_TYPE_BITMAP, DUMP_TYPE_TRIAGE, PAGE_SIZE

ROBUSTNESS = SHARED_SAMPLES / "cases" / "robustness"


header = dmp_header64


marker = pfn_page


def write_full(path: Path, runs, cut_bytes: int = 0) -> None:
    with open(path, "wb") as fh:
        fh.write(header(runs))
        for base, count in runs:
            for pfn in range(base, base + count):
                fh.write(marker(pfn))
        if cut_bytes:
            fh.truncate(fh.tell() - cut_bytes)


def write_bitmap(path: Path, present: list[int], bits: int, cut_bytes: int = 0) -> None:
    bitmap = bytearray((bits + 7) // 8)
    for pfn in present:
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    first = (DUMP_HEADER64_SIZE + 0x38 + len(bitmap) + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    with open(path, "wb") as fh:
        fh.write(header([(0, bits)], dump_type=DUMP_TYPE_BITMAP))
        fh.write(build_bitmap_summary(b"FDMP", first, len(present), bits))
        fh.write(bitmap)
        fh.truncate(first)
        fh.seek(first)
        for pfn in sorted(present):
            fh.write(marker(pfn))
        if cut_bytes:
            fh.truncate(fh.tell() - cut_bytes)


def expected_runs(present: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive PFNs, computed the slow obvious way."""
    runs: list[list[int]] = []
    for pfn in sorted(present):
        if runs and runs[-1][0] + runs[-1][1] == pfn:
            runs[-1][1] += 1
        else:
            runs.append([pfn, 1])
    return [(b, c) for b, c in runs]


def test_full_dump_values_and_page_map(tmp_path):
    dump = tmp_path / "full.dmp"
    runs = [(1, 3), (0x10, 2)]
    write_full(dump, runs)
    with open(dump, "rb") as fh:
        dmp = read_dmp(fh)
        assert dmp.is64 and dmp.dump_type == 1 and dmp.header_size == DUMP_HEADER64_SIZE
        assert dmp.runs is not None and dmp.runs.runs == tuple(runs) and dmp.runs.pages == 5
        assert dmp.extent == dmp.size == DUMP_HEADER64_SIZE + 5 * PAGE_SIZE
        assert dump_extent(fh) == dmp.extent
        pages = page_map(fh, dmp)
    assert list(zip(pages.pfn, pages.pages, pages.offset, strict=True)) == [
        (1, 3, DUMP_HEADER64_SIZE), (0x10, 2, DUMP_HEADER64_SIZE + 3 * PAGE_SIZE)]
    assert pages.missing == ()


def test_truncated_full_dump_names_what_is_missing(tmp_path):
    dump = tmp_path / "cut.dmp"
    write_full(dump, [(1, 3), (0x10, 2)], cut_bytes=PAGE_SIZE + 16)
    with open(dump, "rb") as fh:
        pages = page_map(fh, read_dmp(fh))
    assert pages.missing == ((0x11 * PAGE_SIZE - 16, 0x12 * PAGE_SIZE),)  # page 0x10 lacks 16 bytes


@pytest.mark.parametrize("chunk", [4, 1 << 20])
def test_bitmap_page_map_matches_the_bits(tmp_path, monkeypatch, chunk):
    """Mixed bytes, 0xFF stretches, runs across byte and chunk boundaries, a Pages count not a multiple of 8."""
    monkeypatch.setattr(pagemap, "BITMAP_CHUNK", chunk)
    rng = random.Random(7)
    bits = 1000
    present = sorted(set(rng.sample(range(bits), 300)) | set(range(64, 200)) | {bits - 1})
    dump = tmp_path / "bitmap.dmp"
    write_bitmap(dump, present, bits)
    with open(dump, "rb") as fh:
        dmp = read_dmp(fh)
        pages = page_map(fh, dmp)
    assert list(zip(pages.pfn, pages.pages, strict=True)) == expected_runs(present)
    assert pages.missing == ()
    with open(dump, "rb") as fh:  # every run's offset holds its own pages
        for pfn, count, offset in zip(pages.pfn, pages.pages, pages.offset, strict=True):
            fh.seek(offset)
            assert fh.read(8) == marker(pfn)[:8]
            fh.seek(offset + (count - 1) * PAGE_SIZE)
            assert fh.read(8) == marker(pfn + count - 1)[:8]


def test_truncated_bitmap_dump_stops_where_the_file_ends(tmp_path):
    present = [2, 3, 4, 9, 10, 20]
    dump = tmp_path / "cut-bitmap.dmp"
    write_bitmap(dump, present, 64, cut_bytes=PAGE_SIZE + 100)  # page 20 is gone, page 10 lacks 100 bytes
    with open(dump, "rb") as fh:
        pages = page_map(fh, read_dmp(fh))
    assert list(zip(pages.pfn, pages.pages, strict=True)) == [(2, 3), (9, 2)]
    assert pages.missing == ((11 * PAGE_SIZE - 100, 64 * PAGE_SIZE),)


def test_alternating_bitmap_decodes_in_linear_time(tmp_path):
    """1 MiB of 0x55 (4 Mi runs of one page) over a sparse 16 GiB file: once > 60 s (quadratic), now seconds."""
    bits = 8 * (1 << 20)
    first = (DUMP_HEADER64_SIZE + 0x38 + bits // 8 + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    dump = tmp_path / "alternating.dmp"
    with open(dump, "wb") as fh:
        fh.write(header([(0, bits)], dump_type=DUMP_TYPE_BITMAP))
        fh.write(build_bitmap_summary(b"FDMP", first, bits // 2, bits))
        fh.write(b"\x55" * (bits // 8))
        fh.truncate(first + bits // 2 * PAGE_SIZE)
    started = time.monotonic()
    with open(dump, "rb") as fh:
        pages = page_map(fh, read_dmp(fh))
    elapsed = time.monotonic() - started
    assert len(pages.pfn) == bits // 2 and pages.pfn[-1] == bits - 2 and pages.pages[-1] == 1
    assert pages.offset[-1] == first + (bits // 2 - 1) * PAGE_SIZE
    assert elapsed < 45, f"{elapsed:.1f} s"


def test_bitmap_larger_than_the_file_is_refused_before_reading(tmp_path):
    dump = tmp_path / "huge.dmp"
    with open(dump, "wb") as fh:
        fh.write(header([(0, 16)], dump_type=DUMP_TYPE_BITMAP))
        fh.write(build_bitmap_summary(b"FDMP", 0x3000, 2**64 - 1, 2**64 - 1))
        fh.write(bytes(PAGE_SIZE))
    with open(dump, "rb") as fh:
        dmp = read_dmp(fh)
        with pytest.raises(WincrashError, match="runs past the end of the file"):
            page_map(fh, dmp)


def test_first_page_inside_the_bitmap_is_corrupt(tmp_path):
    dump = tmp_path / "inside.dmp"
    write_bitmap(dump, [1, 2], 64)
    raw = bytearray(dump.read_bytes())
    raw[0x2020:0x2028] = (0x2030).to_bytes(8, "little")  # FirstPage inside the summary and bitmap
    dump.write_bytes(bytes(raw))
    with open(dump, "rb") as fh:
        with pytest.raises(WincrashError, match="lies inside the bitmap"):
            page_map(fh, read_dmp(fh))


def test_triage_and_short_headers_are_refused(tmp_path):
    triage = sample_file("real/triage_x64.dmp")
    with open(triage, "rb") as fh:
        dmp = read_dmp(fh)
        assert dmp.dump_type == DUMP_TYPE_TRIAGE and dmp.runs is None and dmp.triage.SizeOfDump == 0x13A28C
        assert dmp.secondary_blobs == 20 and dmp.extent == triage.stat().st_size
        with pytest.raises(WincrashError, match="no physical memory runs"):
            page_map(fh, dmp)
    short = tmp_path / "short.dmp"
    short.write_bytes(triage.read_bytes()[:8191])
    with open(short, "rb") as fh, pytest.raises(WincrashError, match="8191 bytes, a 64-bit dump header needs 8192"):
        read_dmp(fh)


@pytest.mark.parametrize("case,name,message", [
    ("dmp-bitmap-pages-huge", "hugepages.dmp", "runs past the end of the file: corrupt dump"),
    ("dmp-truncated-header-internal-error", "short8.dmp", "truncated crash dump: 8 bytes"),
    ("dmp-truncated-header-internal-error", "short4096.dmp", "truncated crash dump: 4096 bytes"),
    ("dmp-truncated-header-internal-error", "short8191.dmp", "truncated crash dump: 8191 bytes"),
])
def test_robustness_cases_convert_fails_in_one_line(tmp_path, case, name, message):
    path = sample_file(f"cases/robustness/{case}/{name}")
    proc = run_wincrash("convert", path, "-o", tmp_path / "out.dmp", timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert proc.stderr.startswith("wincrash: error: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out.dmp").exists()


def test_robustness_alternating_bitmap_fails_fast(tmp_path):
    import lzma

    packed = ROBUSTNESS / "dmp-bitmap-alternating-hang" / "alt4.dmp.xz"
    if not packed.is_file():
        pytest.skip(f"robustness case {packed} is absent")
    dump = tmp_path / "alt4.dmp"
    dump.write_bytes(lzma.decompress(packed.read_bytes()))
    started = time.monotonic()
    proc = run_wincrash("convert", dump, "-o", tmp_path / "out.dmp", timeout=60)
    assert proc.returncode == 2 and "corrupt dump" in proc.stderr and proc.stderr.count("\n") == 1
    assert time.monotonic() - started < 30


def test_full_dump_run_beyond_physical_addresses_is_corrupt(tmp_path):
    dump = tmp_path / "huge-run.dmp"
    dump.write_bytes(header([(1, 2**60)]) + bytes(PAGE_SIZE))
    with open(dump, "rb") as fh:
        dmp = read_dmp(fh)
        assert dmp.extent == DUMP_HEADER64_SIZE + 2**60 * PAGE_SIZE  # what the header says, for info to report
        with pytest.raises(WincrashError, match="beyond any physical address"):
            page_map(fh, dmp)
