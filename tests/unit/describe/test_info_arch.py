"""`wincrash info` reads the header CONTEXT as the dump's own architecture (ARM64, x86, x64)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from helpers import run_wincrash

from wincrash.dmp.header import HeaderFields, build_header64
from wincrash.formats.context import (
    CONTEXT_AMD64_STRUCT,
    CONTEXT_ARM64_CONTROL,
    CONTEXT_ARM64_INTEGER,
    CONTEXT_ARM64_STRUCT,
    CONTEXT_FULL,
    CONTEXT_I386,
    CONTEXT_X86_STRUCT,
)
from wincrash.formats.dump import DUMP_HEADER64_SIZE, MACHINE_ARM64, PAGE_SIZE

CONTEXT_OFFSET64 = 0x348


def fields(runs, **overrides) -> HeaderFields:
    """A sound x64 full-dump header's fields (the values of the real triage sample)."""
    ctx = CONTEXT_AMD64_STRUCT.parse(bytes(0x4D0))
    ctx.ContextFlags, ctx.SegCs, ctx.SegSs, ctx.Rip, ctx.Rsp = CONTEXT_FULL, 0x10, 0x18, 0xFFFFF80000001000, 0
    ctx.MxCsr = ctx.FltSave.MxCsr = 0x1F80
    base = dict(build=19041, directory_table_base=0x1AD000, pfn_database=0xFFFFF8047C6FC500,
                ps_loaded_module_list=0xFFFFF8047C62A390, ps_active_process_head=0xFFFFF8047C61E200,
                kd_debugger_data_block=0xFFFFF8047C600B20, number_processors=2, bugcheck_code=0x80,
                bugcheck_parameters=(0, 0, 0, 0), runs=runs, context=CONTEXT_AMD64_STRUCT.build(ctx),
                system_time=132583283029870000, system_uptime=10_000_000 * 3600,
                required_dump_space=DUMP_HEADER64_SIZE + sum(c for _, c in runs) * PAGE_SIZE)
    base.update(overrides)
    return HeaderFields(**base)
CONTEXT_OFFSET32 = 0x320


def offset_of(struct_, name: str) -> int:
    offset = 0
    for sub in struct_.subcons:
        if sub.name == name:
            return offset
        offset += sub.sizeof()
    raise KeyError(name)


def test_arm64_and_x86_context_offsets_match_winnt_h():
    arm64 = {"ContextFlags": 0x0, "Cpsr": 0x4, "X": 0x8, "Fp": 0xF0, "Lr": 0xF8, "Sp": 0x100, "Pc": 0x108,
             "V": 0x110, "Fpcr": 0x310, "Fpsr": 0x314, "Bcr": 0x318, "Bvr": 0x338, "Wcr": 0x378, "Wvr": 0x380}
    assert {k: offset_of(CONTEXT_ARM64_STRUCT, k) for k in arm64} == arm64
    assert CONTEXT_ARM64_STRUCT.sizeof() == 0x390
    x86 = {"ContextFlags": 0x0, "Dr7": 0x18, "FloatSave": 0x1C, "SegGs": 0x8C, "Edi": 0x9C, "Eax": 0xB0,
           "Ebp": 0xB4, "Eip": 0xB8, "SegCs": 0xBC, "EFlags": 0xC0, "Esp": 0xC4, "SegSs": 0xC8,
           "ExtendedRegisters": 0xCC}
    assert {k: offset_of(CONTEXT_X86_STRUCT, k) for k in x86} == x86
    assert CONTEXT_X86_STRUCT.sizeof() == 0x2CC


def arm64_context(pc=0xFFFFF80412345678, sp=0xFFFFF80400A0F000, cpsr=0x60000005, flags=None) -> bytes:
    ctx = CONTEXT_ARM64_STRUCT.parse(bytes(0x390))
    ctx.ContextFlags = CONTEXT_ARM64_CONTROL | CONTEXT_ARM64_INTEGER if flags is None else flags
    ctx.Cpsr, ctx.Pc, ctx.Sp, ctx.Lr, ctx.Fp = cpsr, pc, sp, pc - 0x40, sp + 0x60
    ctx.X[6] = 0x6000  # what the x64 reading took for "CS" in issue 10
    ctx.X[0] = 0x1C8
    return CONTEXT_ARM64_STRUCT.build(ctx)


def write_arm64_dump(path: Path, context: bytes) -> None:
    runs = [(1, 16)]
    raw = bytearray(build_header64(fields(runs, machine=MACHINE_ARM64, bugcheck_code=0x1C8)))
    raw[CONTEXT_OFFSET64:CONTEXT_OFFSET64 + 0xBB8] = context.ljust(0xBB8, b"\0")
    path.write_bytes(bytes(raw) + bytes(16 * PAGE_SIZE))


def info_json(path: Path) -> tuple[int, dict]:
    proc = run_wincrash("info", path, "--json")
    assert proc.stderr == "", proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_sound_arm64_dump_is_sound_and_shows_its_registers(tmp_path):
    dump = tmp_path / "arm64.dmp"
    write_arm64_dump(dump, arm64_context())
    code, data = info_json(dump)
    assert code == 0, data["problems"]
    assert data["header"]["machine"] == "ARM64"
    ctx = data["context"]
    assert ctx["architecture"] == "ARM64" and ctx["pc"] == "0xfffff80412345678" and ctx["sp"] == "0xfffff80400a0f000"
    assert ctx["lr"] == "0xfffff80412345638" and ctx["fp"] == "0xfffff80400a0f060" and ctx["mode"] == "EL1h"
    assert ctx["context_flags"] == "0x400003" and len(ctx["x"]) == 29 and ctx["x"][6] == "0x6000"
    assert "cs" not in ctx
    assert data["bugcheck"]["name"] == "MANUALLY_INITIATED_POWER_BUTTON_HOLD"


@pytest.mark.parametrize("context, message", [
    (dict(flags=0x10000F), "lacks CONTEXT_ARM64"),
    (dict(pc=0xFFFFF80412345679), "not a 4-byte aligned"),
    (dict(pc=0x7FF712340000), "not in the kernel half"),
    (dict(sp=0xFFFFF80400A0F008), "not 16-byte aligned"),
    (dict(cpsr=0x60000009), "not EL0 or EL1"),
    (dict(cpsr=0x60000010), "AArch32"),
])
def test_unsound_arm64_context_is_reported(tmp_path, context, message):
    dump = tmp_path / "arm64-bad.dmp"
    write_arm64_dump(dump, arm64_context(**context))
    code, data = info_json(dump)
    assert code == 1
    assert any(message in p for p in data["problems"]), data["problems"]
    assert not any("CS is" in p for p in data["problems"])


def write_x86_dump(path: Path, cs=0x08, eip=0x8281A2B4, eflags=0x00000246, flags=CONTEXT_I386 | 0x7) -> None:
    """A 32-bit full dump (DUMP_HEADER32, 'PAGEDUMP') of 16 pages at PFN 1."""
    raw = bytearray(b"PAGE" * 0x400)
    raw[0:8] = b"PAGEDUMP"
    struct.pack_into("<IIIIII", raw, 0x08, 0xF, 7601, 0x185000, 0x82970000, 0x82950000, 0x82940000)
    struct.pack_into("<III", raw, 0x20, 0x014C, 1, 0x80)  # MachineImageType, NumberProcessors, BugCheckCode
    struct.pack_into("<IIII", raw, 0x2C, 0, 0, 0, 0)
    struct.pack_into("<I", raw, 0x60, 0x82930000)  # KdDebuggerDataBlock
    struct.pack_into("<IIII", raw, 0x64, 1, 16, 1, 16)  # one run: PFN 1, 16 pages
    ctx = CONTEXT_X86_STRUCT.parse(bytes(0x2CC))
    ctx.ContextFlags, ctx.SegCs, ctx.Eip, ctx.EFlags = flags, cs, eip, eflags
    ctx.Esp, ctx.Ebp, ctx.SegSs = 0x8A5F3C10, 0x8A5F3C40, 0x10
    raw[CONTEXT_OFFSET32:CONTEXT_OFFSET32 + 0x2CC] = CONTEXT_X86_STRUCT.build(ctx)
    struct.pack_into("<I", raw, 0x7D0, 0x80000003)  # exception code
    struct.pack_into("<I", raw, 0xF88, 1)  # DumpType full
    struct.pack_into("<Q", raw, 0xFA0, 0x1000 + 16 * PAGE_SIZE)  # RequiredDumpSpace
    struct.pack_into("<Q", raw, 0xFC0, 132583283029870000)  # SystemTime
    path.write_bytes(bytes(raw) + bytes(16 * PAGE_SIZE))


def test_sound_x86_dump_shows_its_own_context(tmp_path):
    dump = tmp_path / "x86.dmp"
    write_x86_dump(dump)
    code, data = info_json(dump)
    assert code == 0, data["problems"]
    assert data["kind"] == "dmp32" and data["header"]["machine"] == "x86"
    ctx = data["context"]
    assert ctx["architecture"] == "x86" and ctx["eip"] == "0x8281a2b4" and ctx["cs"] == "0x8"
    assert ctx["esp"] == "0x8a5f3c10" and ctx["ebp"] == "0x8a5f3c40" and ctx["eflags"] == "0x246"


@pytest.mark.parametrize("kwargs, message", [
    (dict(cs=0x10), "not a 32-bit Windows code selector"),
    (dict(eip=0x401000), "below 0x80000000"),
    (dict(eflags=0x244), "bit 1 clear"),
    (dict(flags=0x10000F), "lacks CONTEXT_i386"),
])
def test_unsound_x86_context_is_reported(tmp_path, kwargs, message):
    dump = tmp_path / "x86-bad.dmp"
    write_x86_dump(dump, **kwargs)
    code, data = info_json(dump)
    assert code == 1 and any(message in p for p in data["problems"]), data["problems"]


def test_x64_context_checks_are_unchanged(tmp_path):
    dump = tmp_path / "x64.dmp"
    dump.write_bytes(build_header64(fields([(1, 16)])) + bytes(16 * PAGE_SIZE))
    code, data = info_json(dump)
    assert code == 0, data["problems"]
    assert data["context"]["architecture"] == "x64" and data["context"]["cs"] == "0x10"
    assert len(dump.read_bytes()) == DUMP_HEADER64_SIZE + 16 * PAGE_SIZE
