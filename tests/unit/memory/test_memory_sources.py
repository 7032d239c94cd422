"""wincrash.memory: one class per container format, chosen by content; PhysicalSource reads through any of them."""

from __future__ import annotations

import lzma
import os
import stat

import pytest
from helpers import SHARED_SAMPLES, dmp_header64, pfn_page, run_wincrash

from wincrash.dmp.header import build_bitmap_summary
from wincrash.errors import WincrashError
from wincrash.formats.dump import DUMP_HEADER64_SIZE, DUMP_TYPE_BITMAP, PAGE_SIZE
from wincrash.memory.dmp import Dmp
from wincrash.memory.qemu_elf import QemuElf
from wincrash.memory.raw import Raw, Unconvertible
from wincrash.memory.savevm import QemuSavevm
from wincrash.memory.segments import PackedSegments, Segment
from wincrash.memory.source import FORMATS, detect_format, open_source

SAVEVM_CASE = SHARED_SAMPLES / "cases" / "robustness" / "savevm-convert-01-byteflip-internal-error" / "input.xz"


header = dmp_header64


page = pfn_page


@pytest.mark.parametrize("head,fmt", [
    (b"\x7fELF\x02\x01\x01\x00" + bytes(8), QemuElf),
    (b"QEVM\x00\x00\x00\x03" + bytes(8), QemuSavevm),
    (b"PAGEDU64" + bytes(8), Dmp),
    (b"PAGEDUMP" + bytes(8), Unconvertible),
    (b"MDMP" + bytes(12), Unconvertible),
    (b"KDUMP   " + bytes(8), Unconvertible),
    (b"HIBR" + bytes(12), Unconvertible),
    (bytes(16), Raw),
    (b"\x03" + bytes(15), Raw),
])
def test_detection_by_content(head, fmt):
    assert detect_format(head, 1 << 20) is fmt


def test_every_format_has_one_kind_and_raw_comes_last():
    kinds = [fmt.kind for fmt in FORMATS]
    assert len(set(kinds)) == len(kinds) and FORMATS[-1] is Raw


def test_raw_image_maps_address_n_to_offset_n(tmp_path):
    image = tmp_path / "ram.raw"
    image.write_bytes(b"".join(page(pfn) for pfn in range(4)))
    source = open_source(image)
    with source.fh:
        assert source.kind == "raw" and source.segments == [Segment(0, 4 * PAGE_SIZE, 0, 4 * PAGE_SIZE)]
        assert source.read_u64(2 * PAGE_SIZE) == 2 and source.read(5 * PAGE_SIZE, 4) == bytes(4)
        assert source.cpus == [] and source.missing is None


def test_raw_image_under_a_page_is_refused(tmp_path):
    small = tmp_path / "small.raw"
    small.write_bytes(bytes(100))
    with pytest.raises(WincrashError, match="too small to be a memory image"):
        open_source(small)


def test_bitmap_dmp_as_source_reads_each_page_where_it_is(tmp_path):
    present = [1, 2, 3, 8, 9, 40]
    bits = 64
    bitmap = bytearray(bits // 8)
    for pfn in present:
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    first = 0x3000
    dump = tmp_path / "bitmap.dmp"
    with open(dump, "wb") as fh:
        fh.write(header([(0, bits)], dump_type=DUMP_TYPE_BITMAP))
        fh.write(build_bitmap_summary(b"FDMP", first, len(present), bits))
        fh.write(bitmap)
        fh.truncate(first)
        fh.seek(first)
        fh.write(b"".join(page(pfn) for pfn in present))
    source = open_source(dump)
    with source.fh:
        assert source.kind == "dmp" and isinstance(source.segments, PackedSegments)
        assert [(s.paddr // PAGE_SIZE, s.size // PAGE_SIZE) for s in source.segments] == [(1, 3), (8, 2), (40, 1)]
        for pfn in range(bits):
            assert source.read_u64(pfn * PAGE_SIZE + 8) == (pfn if pfn in present else 0), pfn
        assert source.missing == []


def test_truncated_full_dmp_as_source_names_the_missing_range(tmp_path):
    dump = tmp_path / "full.dmp"
    dump.write_bytes(header([(0, 2), (0x10, 2)]) + b"".join(page(p) for p in (0, 1, 0x10)) + page(0x11)[:100])
    source = open_source(dump)
    with source.fh:
        assert source.read_u64(0x10 * PAGE_SIZE) == 0x10 and source.read_u64(0x11 * PAGE_SIZE) == 0x11
        assert source.read(0x11 * PAGE_SIZE + 100, 8) == bytes(8)
        assert source.missing == [(0x11 * PAGE_SIZE + 100, 0x12 * PAGE_SIZE)]
        assert source.segments[-1].filesz == PAGE_SIZE + 100 and source.segments[-1].size == 2 * PAGE_SIZE


def test_packed_segments_clip_to_the_file():
    packed = PackedSegments(file_size=0x2800)
    packed.append(Segment(0, 0x1000, 0x1000, 0x1000))
    packed.append(Segment(0x1000, 0x1000, 0x2000, 0x1000))  # contiguous in memory and file: merged
    packed.append(Segment(0x5000, 0x1000, 0x3000, 0x1000))
    assert len(packed) == 2
    assert packed[0] == Segment(0, 0x2000, 0x1000, 0x1800)
    assert packed[1] == Segment(0x5000, 0x1000, 0x3000, 0)


def test_damaged_savevm_stream_is_one_line(tmp_path):
    if not SAVEVM_CASE.is_file():
        pytest.skip(f"robustness case {SAVEVM_CASE} is absent")
    data = lzma.decompress(SAVEVM_CASE.read_bytes())
    for name, content in (("flipped.savevm", data), ("truncated.savevm", data[:len(data) // 2])):
        stream = tmp_path / name
        stream.write_bytes(content)
        proc = run_wincrash("convert", stream, "-o", tmp_path / "out.dmp", timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("wincrash: error: ") and proc.stderr.count("\n") == 1
        assert "not a QEMU savevm stream volatility3 can read" in proc.stderr


@pytest.mark.parametrize("command", ["info", "convert"])
def test_fifo_input_is_refused_not_waited_on(tmp_path, command):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    args = ("convert", fifo, "-o", tmp_path / "out.dmp") if command == "convert" else ("info", fifo)
    proc = run_wincrash(*args, timeout=30)
    assert proc.returncode == 2 and "is a FIFO" in proc.stderr and proc.stderr.count("\n") == 1


def test_dmp_header_size_is_what_the_reader_needs():
    assert DUMP_HEADER64_SIZE == 0x2000


def test_bitmap_dmp_converts_again_to_the_same_memory(tmp_path):
    """DMP as input (to re-write or repair a dump): ELF -> bitmap DMP -> full DMP holds the guest's pages."""
    import kdmp_parser
    from wincrash_testkit.synth.guest import GuestSpec, generate
    from wincrash_testkit.synth.writers import write_qemu_elf

    guest = generate(GuestSpec(build=19041, cpus=2, ram_mib=1024, seed=5, crashed=True))
    elf, bitmap, full = tmp_path / "g.elf", tmp_path / "bitmap.dmp", tmp_path / "full.dmp"
    with open(elf, "wb") as fh:
        write_qemu_elf(fh, guest)
    for src, dst, fmt in ((elf, bitmap, "bitmap"), (bitmap, full, "full")):
        proc = run_wincrash("convert", src, "-o", dst, "--format", fmt)
        assert proc.returncode == 0, proc.stderr
    parser = kdmp_parser.KernelDumpParser(full)
    assert parser.header.MinorVersion == 19041
    with open(full, "rb") as fh:
        fh.seek(0xF98)
        assert fh.read(4) == (1).to_bytes(4, "little")  # DumpType 1: full
    first = kdmp_parser.KernelDumpParser(bitmap)  # the converter patches memory (KDBG decoded): compare the dumps
    checked = 0
    for pfn in sorted(guest.mem.pages)[:2000]:
        want, got = first.read_physical_page(pfn * PAGE_SIZE), parser.read_physical_page(pfn * PAGE_SIZE)
        if want is None:  # left out of the bitmap dump: absent or zeros in the full one
            assert got is None or not any(got), f"page 0x{pfn:x}"
            continue
        assert got is not None and bytes(got) == bytes(want), f"page 0x{pfn:x}"
        checked += 1
    assert checked > 100
