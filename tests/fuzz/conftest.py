"""Fuzz seeds: a generated guest in every container form wincrash reads, plus ../shared/samples cases when present."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from fuzzing import Seed
from helpers import SHARED_SAMPLES

DMP_FIELDS = [(0x10, 8), (0x30, 4), (0x34, 4), (0x38, 4), (0x88, 4), (0x8C, 4), (0x90, 8), (0x98, 8), (0xA0, 8),
              (0xA8, 8), (0xB0, 8), (0xB8, 8), (0xC0, 8), (0xF98, 4), (0xFA0, 8), (0x2020, 8), (0x2028, 8),
              (0x2030, 8), (0x2038, 8)]
PHDR_FIELDS = [(0, 4), (8, 8), (0x10, 8), (0x18, 8), (0x20, 8), (0x28, 8)]
LIME_MAGIC = 0x4C694D45


def elf_fields(path: Path) -> list[tuple[int, int]]:
    """ELF header, program header and note header fields of a QEMU ELF (offset, width)."""
    head = path.open("rb").read(0x10000)
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phnum, = struct.unpack_from("<H", head, 0x38)
    fields = [(0x20, 8), (0x36, 2), (0x38, 2), (0x10, 2), (0x4, 1)]
    for i in range(min(phnum, 8)):
        fields += [(phoff + 56 * i + off, w) for off, w in PHDR_FIELDS]
    note_off, = struct.unpack_from("<Q", head, phoff + 8)
    fields += [(note_off, 4), (note_off + 4, 4), (note_off + 8, 4)]
    return fields


def lime_from_elf(elf: Path, dst: Path) -> list[tuple[int, int]]:
    """A LiME file (lime_mem_range_header: magic, version 1, start, inclusive end, reserved) of the ELF's RAM,
    sparse; returns the header fields."""
    from wincrash.memory.qemu_elf import read_elf_layout

    with open(elf, "rb") as fh:
        layout = read_elf_layout(fh, elf.stat().st_size)
    fields = []
    with open(elf, "rb") as src, open(dst, "wb") as out:
        pos = 0
        for seg in layout.segments:
            out.seek(pos)
            out.write(struct.pack("<IIQQQ", LIME_MAGIC, 1, seg.paddr, seg.paddr + seg.size - 1, 0))
            fields += [(pos, 4), (pos + 4, 4), (pos + 8, 8), (pos + 16, 8)]
            pos += 32
            out.flush()
            out.truncate(pos + seg.size)
            for off in range(seg.offset, seg.offset + seg.filesz, 1 << 20):
                chunk = os.pread(src.fileno(), min(1 << 20, seg.offset + seg.filesz - off), off)
                if chunk.count(0) != len(chunk):
                    os.pwrite(out.fileno(), chunk, pos + off - seg.offset)
            pos += seg.size
    return fields


@pytest.fixture(scope="session")
def fuzz_seeds(tmp_path_factory) -> list[Seed]:
    """Seeds in every input form (see tests/fuzz/fuzzing.py), generated once per session."""
    from wincrash_testkit.synth.guest import GuestSpec, generate
    from wincrash_testkit.synth.writers import write_qemu_elf, write_raw

    from wincrash.convert.pipeline import convert_file

    work = tmp_path_factory.mktemp("fuzz-seeds")
    guest = generate(GuestSpec(build=19041, cpus=2, ram_mib=256, seed=7, crashed=True))
    elf, raw = work / "g.elf", work / "g.raw"
    with open(elf, "wb") as fh:
        write_qemu_elf(fh, guest)
    with open(raw, "wb") as fh:
        write_raw(fh, guest)
    seeds = [Seed("elf", elf, elf_fields(elf), head=0x4000), Seed("raw", raw, [], raw_pages=True, head=0x1000)]
    for fmt in ("full", "bitmap", "kernel"):
        out = work / f"g-{fmt}.dmp"
        convert_file(elf, out, fmt=fmt, progress=False)
        seeds.append(Seed(f"dmp-{fmt}", out, DMP_FIELDS, head=0x2100))
    pagefile = work / "pagefile.sys"
    with open(pagefile, "wb") as fh:
        fh.write((work / "g-kernel.dmp").read_bytes() + os.urandom(0x10000))
    seeds.append(Seed("pagefile", pagefile, DMP_FIELDS, mode="pagefile", head=0x2100))
    lime = work / "g.lime"
    seeds.append(Seed("lime", lime, lime_from_elf(elf, lime), head=0x100))
    small = work / "pages.raw"
    small.write_bytes(bytes(0x10000))
    seeds.append(Seed("raw-small", small, [], raw_pages=True, head=0x10000))
    for case, fields in (("libvirt-save-header/vm.libvirt-save", [(16 + 4 * i, 4) for i in range(5)]),
                         ("kdump-flattened/vm.kdump-zlib", [(0x1000 + i, 8) for i in range(0, 0x40, 8)]),
                         ("virsh-compressed-stream/vm.virshdump-gzip", [])):
        path = SHARED_SAMPLES / "cases" / case
        if path.is_file():  # read in place, never copied into the repository
            seeds.append(Seed(case.split("/")[0], path, fields, head=0x3000))
    return seeds
