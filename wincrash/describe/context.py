"""The dump header's CONTEXT record, read and checked as the architecture it belongs to.

MachineImageType decides the layout: AMD64 (0x8664), ARM64 (0xAA64) or x86 (0x014C); each has its
own CONTEXT (wincrash.formats.context, per winnt.h) and its own soundness rules. An ARM64 record
read as AMD64 would show X6's bytes as a "CS" of 0x6000, which is why the checks are per
architecture. Returns frozen values; the caller puts them in its Report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from construct import Container

from wincrash.formats.context import (
    CONTEXT_AMD64_SIZE,
    CONTEXT_AMD64_STRUCT,
    CONTEXT_ARM64,
    CONTEXT_ARM64_SIZE,
    CONTEXT_ARM64_STRUCT,
    CONTEXT_FLOATING_POINT,
    CONTEXT_I386,
    CONTEXT_X86_SIZE,
    CONTEXT_X86_STRUCT,
)
from wincrash.formats.dump import MACHINE_AMD64, MACHINE_ARM64, MACHINE_I386, PAGE_PATTERN_U32

AMD64_CODE_SELECTORS = (0x10, 0x33, 0x23)  # kernel, user (64-bit), WOW64 user
X86_KERNEL_CS, X86_USER_CS = 0x08, 0x1B
X86_EFLAGS_RESERVED = 0x2  # bit 1 of EFLAGS always reads as 1
ARM64_EL_NAMES = {0b0000: "EL0t", 0b0100: "EL1t", 0b0101: "EL1h", 0b1000: "EL2t", 0b1001: "EL2h"}
ARM64_PSTATE_AARCH32 = 0x10  # M[4]: the processor was in AArch32 state


@dataclass(frozen=True)
class ContextFindings:
    """What the header context says: ``section`` (registers as 0x-hex strings, None when the record
    holds the 'PAGE' fill or the architecture is not decoded) and its ``problems`` and ``notes``."""

    architecture: str | None
    section: dict[str, Any] | None
    problems: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())


def hx(value: int) -> str:
    """0x-prefixed hex, as the rest of `info` shows addresses."""
    return f"0x{value:x}"


def describe_context(buffer: bytes, machine: int, registers_expected: bool) -> ContextFindings:
    """Decode and check the header's ContextRecord for ``machine`` (a MachineImageType).

    ``registers_expected``: the dump type promises a context (full, kernel, bitmap dumps), so a
    record still holding the 'PAGE' fill is a problem rather than a fact.
    """
    flags_at = 0x30 if machine == MACHINE_AMD64 else 0  # ContextFlags follows P1Home-P6Home on AMD64 only
    if int.from_bytes(buffer[flags_at:flags_at + 4], "little") == PAGE_PATTERN_U32:
        problems = ("the header context record holds the 'PAGE' fill: no registers",) if registers_expected else ()
        return ContextFindings(None, None, problems)
    if machine == MACHINE_AMD64 and len(buffer) >= CONTEXT_AMD64_SIZE:
        return _amd64(CONTEXT_AMD64_STRUCT.parse(buffer[:CONTEXT_AMD64_SIZE]))
    if machine == MACHINE_ARM64 and len(buffer) >= CONTEXT_ARM64_SIZE:
        return _arm64(CONTEXT_ARM64_STRUCT.parse(buffer[:CONTEXT_ARM64_SIZE]))
    if machine == MACHINE_I386 and len(buffer) >= CONTEXT_X86_SIZE:
        return _x86(CONTEXT_X86_STRUCT.parse(buffer[:CONTEXT_X86_SIZE]))
    return ContextFindings(None, None, notes=(f"the header context of machine 0x{machine:x} is not decoded",))


def _amd64(ctx: Container) -> ContextFindings:
    section = {
        "architecture": "x64",
        "rip": hx(ctx.Rip), "rsp": hx(ctx.Rsp), "rbp": hx(ctx.Rbp),
        "cs": hx(ctx.SegCs), "ss": hx(ctx.SegSs), "eflags": hx(ctx.EFlags),
        "context_flags": hx(ctx.ContextFlags), "mxcsr": hx(ctx.MxCsr),
    }
    problems = []
    if ctx.SegCs not in AMD64_CODE_SELECTORS:
        problems.append(f"header context CS is 0x{ctx.SegCs:x}, not a Windows code selector (kernel 0x10, user 0x33)")
    if ctx.ContextFlags & CONTEXT_FLOATING_POINT == CONTEXT_FLOATING_POINT and ctx.MxCsr != ctx.FltSave.MxCsr:
        problems.append(f"header context MxCsr 0x{ctx.MxCsr:x} differs from FltSave.MxCsr 0x{ctx.FltSave.MxCsr:x}")
    return ContextFindings("x64", section, tuple(problems))


def _arm64(ctx: Container) -> ContextFindings:
    """ARM64 rules: the CONTEXT_ARM64 flag, an AArch64 PSTATE at EL0 or EL1, a 4-byte aligned Pc in
    the half of the address space the exception level owns, a 16-byte aligned Sp (the AArch64
    procedure call standard; Windows runs with SP alignment checking on)."""
    mode = ctx.Cpsr & 0xF
    el = ARM64_EL_NAMES.get(mode, f"M=0x{ctx.Cpsr & 0x1F:x}")
    section = {
        "architecture": "ARM64",
        "pc": hx(ctx.Pc), "sp": hx(ctx.Sp), "lr": hx(ctx.Lr), "fp": hx(ctx.Fp),
        "cpsr": hx(ctx.Cpsr), "mode": el, "context_flags": hx(ctx.ContextFlags),
        "x": [hx(x) for x in ctx.X],
    }
    problems = []
    if not ctx.ContextFlags & CONTEXT_ARM64:
        problems.append(f"header context ContextFlags 0x{ctx.ContextFlags:x} lacks CONTEXT_ARM64 (0x400000): "
                        "not an ARM64 context")
    if ctx.Cpsr & ARM64_PSTATE_AARCH32:
        problems.append(f"header context Cpsr 0x{ctx.Cpsr:x} is an AArch32 state, not the ARM64 kernel's")
    elif mode not in (0b0000, 0b0100, 0b0101):
        problems.append(f"header context Cpsr 0x{ctx.Cpsr:x} is at {el}, not EL0 or EL1 where Windows runs")
    kernel = mode in (0b0100, 0b0101)
    if ctx.Pc == 0 or ctx.Pc & 0x3:
        problems.append(f"header context Pc {hx(ctx.Pc)} is not a 4-byte aligned instruction address")
    elif kernel != bool(ctx.Pc >> 63):
        half = "kernel" if kernel else "user"
        problems.append(f"header context Pc {hx(ctx.Pc)} is not in the {half} half of the address space "
                        f"although Cpsr says {el}")
    if ctx.Sp == 0 or ctx.Sp & 0xF:
        problems.append(f"header context Sp {hx(ctx.Sp)} is not 16-byte aligned")
    return ContextFindings("ARM64", section, tuple(problems))


def _x86(ctx: Container) -> ContextFindings:
    """x86 rules: the CONTEXT_i386 flag, a Windows code selector (kernel 0x08, user 0x1B), EFLAGS
    bit 1 set, and a kernel-mode Eip in the upper 2 GiB (kernel space on 32-bit Windows)."""
    section = {
        "architecture": "x86",
        "eip": hx(ctx.Eip), "esp": hx(ctx.Esp), "ebp": hx(ctx.Ebp),
        "cs": hx(ctx.SegCs), "ss": hx(ctx.SegSs), "eflags": hx(ctx.EFlags),
        "context_flags": hx(ctx.ContextFlags),
    }
    problems = []
    if not ctx.ContextFlags & CONTEXT_I386:
        problems.append(f"header context ContextFlags 0x{ctx.ContextFlags:x} lacks CONTEXT_i386 (0x10000): "
                        "not an x86 context")
    cs = ctx.SegCs & 0xFFFF
    if cs not in (X86_KERNEL_CS, X86_USER_CS):
        problems.append(f"header context CS is 0x{cs:x}, not a 32-bit Windows code selector (kernel 0x8, user 0x1b)")
    elif cs == X86_KERNEL_CS and ctx.Eip < 0x80000000:
        problems.append(f"header context Eip {hx(ctx.Eip)} is below 0x80000000 although CS is the kernel's")
    if not ctx.EFlags & X86_EFLAGS_RESERVED:
        problems.append(f"header context EFlags 0x{ctx.EFlags:x} has bit 1 clear (it always reads as 1)")
    return ContextFindings("x86", section, tuple(problems))
