"""Sizes and offsets of the crash dump structures, against ../shared/DESIGN.md §3 and a real dump."""

from __future__ import annotations

import pytest
from construct import Container
from helpers import sample_file

from wincrash.formats.context import CONTEXT_AMD64_SIZE, CONTEXT_AMD64_STRUCT, XMM_SAVE_AREA32
from wincrash.formats.dump import (
    BITMAP_SUMMARY_HEADER,
    DUMP_HEADER32,
    DUMP_HEADER32_SIZE,
    DUMP_HEADER64,
    DUMP_HEADER64_SIZE,
    EXCEPTION_RECORD32,
    EXCEPTION_RECORD64,
    PHYSICAL_MEMORY_DESCRIPTOR64,
)
from wincrash.formats.triage import DUMP_DRIVER_ENTRY64, DUMP_DRIVER_ENTRY64_SIZE, TRIAGE_DUMP64


def offset_of(struct, name: str) -> int:
    """Offset of a top-level field, computed by construct from the definition itself."""
    total = 0
    for sub in struct.subcons:
        if sub.name == name:
            return total
        total += sub.sizeof()
    raise KeyError(name)


@pytest.mark.parametrize("struct,size", [
    (DUMP_HEADER64, DUMP_HEADER64_SIZE), (DUMP_HEADER32, DUMP_HEADER32_SIZE),
    (CONTEXT_AMD64_STRUCT, CONTEXT_AMD64_SIZE), (XMM_SAVE_AREA32, 0x200),
    (EXCEPTION_RECORD64, 0x98), (EXCEPTION_RECORD32, 0x50), (TRIAGE_DUMP64, 0x80),
    (DUMP_DRIVER_ENTRY64, DUMP_DRIVER_ENTRY64_SIZE), (BITMAP_SUMMARY_HEADER, 0x38),
])
def test_sizes(struct, size):
    assert struct.sizeof() == size


HEADER64_OFFSETS = {
    "Signature": 0x0, "ValidDump": 0x4, "MajorVersion": 0x8, "MinorVersion": 0xC, "DirectoryTableBase": 0x10,
    "PfnDataBase": 0x18, "PsLoadedModuleList": 0x20, "PsActiveProcessHead": 0x28, "MachineImageType": 0x30,
    "NumberProcessors": 0x34, "BugCheckCode": 0x38, "BugCheckParameter": 0x40, "KdDebuggerDataBlock": 0x80,
    "PhysicalMemoryBlockBuffer": 0x88, "ContextRecordBuffer": 0x348, "Exception": 0xF00, "DumpType": 0xF98,
    "RequiredDumpSpace": 0xFA0, "SystemTime": 0xFA8, "Comment": 0xFB0, "SystemUpTime": 0x1030,
    "MiniDumpFields": 0x1038, "SecondaryDataState": 0x103C, "ProductType": 0x1040, "SuiteMask": 0x1044,
    "WriterStatus": 0x1048, "KdSecondaryVersion": 0x104D, "Attributes": 0x1050, "BootId": 0x1054,
}


@pytest.mark.parametrize("name,offset", sorted(HEADER64_OFFSETS.items()))
def test_header64_offsets(name, offset):
    assert offset_of(DUMP_HEADER64, name) == offset


CONTEXT_OFFSETS = {
    "ContextFlags": 0x30, "MxCsr": 0x34, "SegCs": 0x38, "SegDs": 0x3A, "SegEs": 0x3C, "SegFs": 0x3E,
    "SegGs": 0x40, "SegSs": 0x42, "EFlags": 0x44, "Dr0": 0x48, "Rax": 0x78, "Rcx": 0x80, "Rsp": 0x98,
    "R15": 0xF0, "Rip": 0xF8, "FltSave": 0x100, "VectorRegister": 0x300, "LastExceptionFromRip": 0x4C8,
}


@pytest.mark.parametrize("name,offset", sorted(CONTEXT_OFFSETS.items()))
def test_context_offsets(name, offset):
    assert offset_of(CONTEXT_AMD64_STRUCT, name) == offset


def test_fltsave_mxcsr_lies_at_0x118():
    assert offset_of(CONTEXT_AMD64_STRUCT, "FltSave") + offset_of(XMM_SAVE_AREA32, "MxCsr") == 0x118


def test_header32_offsets():
    assert offset_of(DUMP_HEADER32, "KdDebuggerDataBlock") == 0x60
    assert offset_of(DUMP_HEADER32, "PhysicalMemoryBlockBuffer") == 0x64
    assert offset_of(DUMP_HEADER32, "ContextRecordBuffer") == 0x320
    assert offset_of(DUMP_HEADER32, "Exception") == 0x7D0
    assert offset_of(DUMP_HEADER32, "DumpType") == 0xF88
    assert offset_of(DUMP_HEADER32, "RequiredDumpSpace") == 0xFA0
    assert offset_of(DUMP_HEADER32, "SystemTime") == 0xFC0


def test_bitmap_and_triage_offsets():
    assert offset_of(BITMAP_SUMMARY_HEADER, "FirstPage") == 0x20
    assert offset_of(BITMAP_SUMMARY_HEADER, "TotalPresentPages") == 0x28
    assert offset_of(BITMAP_SUMMARY_HEADER, "Pages") == 0x30
    assert offset_of(TRIAGE_DUMP64, "DriverListOffset") == 0x30
    assert offset_of(TRIAGE_DUMP64, "DebuggerDataOffset") == 0x70
    assert offset_of(DUMP_DRIVER_ENTRY64, "DllBase") == 0x38


def test_physical_memory_descriptor_places_number_of_pages_at_8():
    """volatility3's crash64.json puts NumberOfPages as a u32 at +4: we must not."""
    raw = PHYSICAL_MEMORY_DESCRIPTOR64.build(Container(NumberOfRuns=2, Padding=0, NumberOfPages=0x123456789,
                                                       Run=[Container(BasePage=1, PageCount=0x9e),
                                                            Container(BasePage=0x100, PageCount=0x123456789 - 0x9e)]))
    assert raw[8:16] == (0x123456789).to_bytes(8, "little")
    assert raw[0x10:0x18] == (1).to_bytes(8, "little")


def _distinct_header() -> bytes:
    raw = bytearray(b"PAGE" * (DUMP_HEADER64_SIZE // 4))
    raw[0:8] = b"PAGEDU64"
    for i in range(8, 0x88, 8):
        raw[i:i + 8] = (0x1111_0000_0000 + i).to_bytes(8, "little")
    raw[0xF98:0xF9C] = (5).to_bytes(4, "little")
    return bytes(raw)


def test_header64_round_trip():
    raw = _distinct_header()
    parsed = DUMP_HEADER64.parse(raw)
    assert parsed.DirectoryTableBase == 0x1111_0000_0000 + 0x10
    assert parsed.KdDebuggerDataBlock == 0x1111_0000_0000 + 0x80
    assert parsed.DumpType == 5
    assert DUMP_HEADER64.build(parsed) == raw


def test_context_round_trip_places_registers():
    values = {name: 0x1000 + i for i, name in enumerate(("Rax", "Rcx", "Rsp", "Rip"))}
    ctx = CONTEXT_AMD64_STRUCT.parse(bytes(CONTEXT_AMD64_SIZE))
    ctx.update(values)
    ctx.SegCs, ctx.MxCsr = 0x10, 0x1F80
    ctx.FltSave.MxCsr = 0x1F80
    raw = CONTEXT_AMD64_STRUCT.build(ctx)
    assert len(raw) == CONTEXT_AMD64_SIZE
    assert int.from_bytes(raw[0x78:0x80], "little") == values["Rax"]
    assert int.from_bytes(raw[0x98:0xA0], "little") == values["Rsp"]
    assert int.from_bytes(raw[0xF8:0x100], "little") == values["Rip"]
    assert int.from_bytes(raw[0x38:0x3A], "little") == 0x10
    assert raw[0x34:0x38] == raw[0x118:0x11C] == (0x1F80).to_bytes(4, "little")
    assert CONTEXT_AMD64_STRUCT.parse(raw).Rcx == values["Rcx"]


def test_real_triage_header_fields():
    raw = sample_file("real/triage_x64.dmp").read_bytes()
    header = DUMP_HEADER64.parse(raw[:DUMP_HEADER64_SIZE])
    assert header.MajorVersion == 0xF and header.MinorVersion == 19041
    assert header.DirectoryTableBase == 0x1AD000
    assert header.KdDebuggerDataBlock == 0xFFFFF8047C600B20
    assert header.RequiredDumpSpace == 0x197915
    triage = TRIAGE_DUMP64.parse(raw[DUMP_HEADER64_SIZE:])
    assert triage.ValidOffset == 0x13A288 and triage.DriverCount == 151
    assert triage.DebuggerDataOffset == 0x104A8 and triage.DebuggerDataSize == 0x380
    assert raw[triage.ValidOffset:triage.ValidOffset + 4] == b"TRGD"
