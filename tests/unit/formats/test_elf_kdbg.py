"""Sizes and offsets of the ELF/QEMU note and KDBG structures, against DESIGN §3 and independent sources."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from construct import Container

from wincrash.formats import elf, kdbg


def _zero(con) -> Container:
    """A Container with every field of a Struct set to zero (nested Structs recursively)."""
    raw = bytearray(con.sizeof())
    if con is elf.Elf64_Ehdr:
        raw[:4] = elf.ELFMAG
    return con.parse(bytes(raw))


def _offset_of(con, path: tuple[str, ...], width: int) -> int:
    """Find where a field lands by building the struct with one distinct value in it."""
    obj = _zero(con)
    marker = {1: 0xA5, 2: 0xA55A, 4: 0xA55A5AA5, 8: 0xA55A5AA51234CDEF}[width]
    target = obj
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = marker
    raw = con.build(obj)
    hits = [i for i in range(len(raw) - width + 1) if int.from_bytes(raw[i:i + width], "little") == marker]
    assert len(hits) == 1, path
    return hits[0]


def test_elf_sizes() -> None:
    assert elf.Elf64_Ehdr.sizeof() == elf.ELF64_EHDR_SIZE == 64
    assert elf.Elf64_Phdr.sizeof() == elf.ELF64_PHDR_SIZE == 56
    assert elf.Elf64_Nhdr.sizeof() == elf.ELF64_NHDR_SIZE == 12
    assert elf.QEMUCPUState.sizeof() == elf.QEMU_CPUSTATE_SIZE == 440
    assert elf.X86_64_ElfPrstatus.sizeof() == elf.X86_64_PRSTATUS_SIZE == 336
    assert elf.QEMUCPUSegment.sizeof() == 24


@pytest.mark.parametrize(("path", "width", "offset"), [
    (("e_type",), 2, 0x10), (("e_machine",), 2, 0x12), (("e_phoff",), 8, 0x20), (("e_ehsize",), 2, 0x34),
    (("e_phentsize",), 2, 0x36), (("e_phnum",), 2, 0x38), (("e_shstrndx",), 2, 0x3E),
])
def test_ehdr_offsets(path, width, offset) -> None:
    assert _offset_of(elf.Elf64_Ehdr, path, width) == offset


@pytest.mark.parametrize(("name", "offset"), [
    ("p_type", 0), ("p_flags", 4), ("p_offset", 8), ("p_vaddr", 0x10), ("p_paddr", 0x18), ("p_filesz", 0x20),
    ("p_memsz", 0x28), ("p_align", 0x30),
])
def test_phdr_offsets(name, offset) -> None:
    width = 4 if name in ("p_type", "p_flags") else 8
    assert _offset_of(elf.Elf64_Phdr, (name,), width) == offset


def test_qemu_cpustate_layout() -> None:
    """DESIGN §3: u32 version, u32 size, 18 u64 (gprs, rip, rflags), 10 segments of 24 bytes, cr[5], kgs."""
    gprs = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
            "r14", "r15", "rip", "rflags")
    for i, name in enumerate(gprs):
        assert _offset_of(elf.QEMUCPUState, (name,), 8) == 8 + 8 * i
    for i, seg in enumerate(("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")):
        base = 0x98 + 24 * i
        assert _offset_of(elf.QEMUCPUState, (seg, "selector"), 4) == base
        assert _offset_of(elf.QEMUCPUState, (seg, "limit"), 4) == base + 4
        assert _offset_of(elf.QEMUCPUState, (seg, "flags"), 4) == base + 8
        assert _offset_of(elf.QEMUCPUState, (seg, "base"), 8) == base + 16
    assert _offset_of(elf.QEMUCPUState, ("kernel_gs_base",), 8) == 0x1B0
    obj = _zero(elf.QEMUCPUState)
    obj.cr = [0x11, 0x22, 0x33, 0x44, 0x55]
    raw = elf.QEMUCPUState.build(obj)
    assert struct.unpack_from("<5Q", raw, 0x188) == (0x11, 0x22, 0x33, 0x44, 0x55)


def test_prstatus_layout() -> None:
    assert _offset_of(elf.X86_64_ElfPrstatus, ("pid",), 4) == 0x20
    for i, name in enumerate(elf.USER_REGS_NAMES):
        assert _offset_of(elf.X86_64_ElfPrstatus, ("regs", name), 8) == elf.X86_64_PRSTATUS_REGS_OFFSET + 8 * i
    assert len(elf.USER_REGS_NAMES) == 27
    assert elf.USER_REGS_NAMES.index("rip") == 16 and elf.USER_REGS_NAMES.index("gs_base") == 22


def test_note_padding() -> None:
    assert [elf.note_pad(n) for n in (5, 4, 8, 440, 336, 3)] == [3, 0, 0, 0, 0, 1]
    assert elf.note_size(5, 440) == 12 + 8 + 440
    assert elf.note_size(5, 336) == 12 + 8 + 336


def test_elf_round_trip() -> None:
    hdr = dict(e_ident=dict(ei_class=2, ei_data=1, ei_version=1, ei_osabi=0, ei_abiversion=0), e_type=4,
               e_machine=62, e_version=1, e_entry=0, e_phoff=64, e_shoff=0, e_flags=0, e_ehsize=8,
               e_phentsize=56, e_phnum=4, e_shentsize=0, e_shnum=0, e_shstrndx=0)
    raw = elf.Elf64_Ehdr.build(hdr)
    assert raw[:4] == b"\x7fELF" and len(raw) == 64
    back = elf.Elf64_Ehdr.parse(raw)
    assert back.e_phnum == 4 and back.e_ehsize == 8 and back.e_ident.ei_class == 2
    state = _zero(elf.QEMUCPUState)
    state.version, state.size, state.rip, state.gs.base = 1, 440, 0xFFFFF80012345678, 0xFFFFF8001F000000
    again = elf.QEMUCPUState.parse(elf.QEMUCPUState.build(state))
    assert (again.rip, again.gs.base, again.size) == (0xFFFFF80012345678, 0xFFFFF8001F000000, 440)


# --- KDBG ----------------------------------------------------------------------------------------
DESIGN_KDBG_OFFSETS = {
    "KernBase": 0x18, "PsLoadedModuleList": 0x48, "PsActiveProcessHead": 0x50, "PspCidTable": 0x58,
    "KiBugcheckData": 0x88, "MmPfnDatabase": 0xC0, "MmHighestPhysicalPage": 0xF0, "KdPrintCircularBuffer": 0x1E0,
    "NtBuildLab": 0x208, "KiProcessorBlock": 0x218, "MmUnloadedDrivers": 0x220, "MmPhysicalMemoryBlock": 0x270,
    "SizeEProcess": 0x2A8, "SizePrcb": 0x2B0, "OffsetPrcbCurrentThread": 0x2B4, "OffsetPrcbProcStateContext": 0x2BC,
    "OffsetPrcbNumber": 0x2BE, "KeLoaderBlock": 0x2D8, "OffsetPrcbContext": 0x338, "PteBase": 0x360,
}


def _kdbg_width(name: str) -> int:
    sub = next(sc for sc in kdbg.KDDEBUGGER_DATA64.subcons if sc.name == name)
    return sub.sizeof()


def test_kdbg_size() -> None:
    assert kdbg.KDDEBUGGER_DATA64.sizeof() == kdbg.KDDEBUGGER_DATA64_SIZE == 0x380
    assert kdbg.DBGKD_GET_VERSION64.sizeof() == kdbg.DBGKD_GET_VERSION64_SIZE == 0x28


@pytest.mark.parametrize(("name", "offset"), sorted(DESIGN_KDBG_OFFSETS.items()))
def test_kdbg_design_offsets(name, offset) -> None:
    assert _offset_of(kdbg.KDDEBUGGER_DATA64, (name,), _kdbg_width(name)) == offset


def test_kdbg_header_offsets() -> None:
    assert _offset_of(kdbg.KDDEBUGGER_DATA64, ("Header", "List", "Flink"), 8) == 0
    assert _offset_of(kdbg.KDDEBUGGER_DATA64, ("Header", "List", "Blink"), 8) == 8
    assert _offset_of(kdbg.KDDEBUGGER_DATA64, ("Header", "OwnerTag"), 4) == 0x10
    assert _offset_of(kdbg.KDDEBUGGER_DATA64, ("Header", "Size"), 4) == 0x14


def test_kdbg_matches_volatility3_table() -> None:
    """volatility3 ships its own KDDEBUGGER_DATA64 table (up to 0x340): an independent check of every field."""
    vol = pytest.importorskip("volatility3")
    path = Path(vol.__file__).parent / "framework" / "symbols" / "windows" / "kdbg.json"
    if not path.is_file():
        pytest.skip(f"volatility3 has no {path}")
    fields = json.loads(path.read_text())["user_types"]["_KDDEBUGGER_DATA64"]["fields"]
    checked = 0
    for name, spec in fields.items():
        if name == "Header":
            continue
        assert _offset_of(kdbg.KDDEBUGGER_DATA64, (name,), _kdbg_width(name)) == spec["offset"], name
        checked += 1
    assert checked > 120


@pytest.mark.parametrize(("name", "width", "offset"), [
    ("MajorVersion", 2, 0), ("MinorVersion", 2, 2), ("KdSecondaryVersion", 1, 5), ("MachineType", 2, 8),
    ("KernBase", 8, 0x10), ("PsLoadedModuleList", 8, 0x18), ("DebuggerDataList", 8, 0x20),
])
def test_version_block_offsets(name, width, offset) -> None:
    assert _offset_of(kdbg.DBGKD_GET_VERSION64, (name,), width) == offset


def test_kdbg_round_trip() -> None:
    obj = _zero(kdbg.KDDEBUGGER_DATA64)
    obj.Header.OwnerTag = int.from_bytes(b"KDBG", "little")
    obj.Header.Size = 0x380
    for i, name in enumerate(kdbg.KDDEBUGGER_DATA64_FIELD_NAMES):
        width = _kdbg_width(name)
        obj[name] = (0x1000 + i) & ((1 << (8 * width)) - 1)
    raw = kdbg.KDDEBUGGER_DATA64.build(obj)
    assert raw[0x10:0x14] == b"KDBG" and len(raw) == 0x380
    back = kdbg.KDDEBUGGER_DATA64.parse(raw)
    for name in kdbg.KDDEBUGGER_DATA64_FIELD_NAMES:
        assert back[name] == obj[name], name
