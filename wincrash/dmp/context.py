"""Turn a vCPU's QEMU register note into the AMD64 CONTEXT WinDbg reads.

QEMU's note has no MXCSR or x87 state; Windows threads run with MXCSR 0x1F80 and x87 control word
0x27F, so those are written (and MxCsr is mirrored into FltSave, as WinDbg checks). Segment
selectors, EFlags and every general register come from the note.
"""

from __future__ import annotations

from construct import Container

from wincrash.formats.context import (
    CONTEXT_AMD64_SIZE,
    CONTEXT_AMD64_STRUCT,
    CONTEXT_CONTROL,
    CONTEXT_FLOATING_POINT,
    CONTEXT_INTEGER,
    CONTEXT_SEGMENTS,
    FPU_CONTROL_DEFAULT,
    MXCSR_DEFAULT,
)

CONTEXT_WRITTEN = CONTEXT_CONTROL | CONTEXT_INTEGER | CONTEXT_SEGMENTS | CONTEXT_FLOATING_POINT
_NOTE_TO_CONTEXT = {"rax": "Rax", "rbx": "Rbx", "rcx": "Rcx", "rdx": "Rdx", "rsi": "Rsi", "rdi": "Rdi",
                    "rsp": "Rsp", "rbp": "Rbp", "r8": "R8", "r9": "R9", "r10": "R10", "r11": "R11", "r12": "R12",
                    "r13": "R13", "r14": "R14", "r15": "R15", "rip": "Rip"}


def context_from_note(cpu: Container) -> bytes:
    """A complete 0x4D0-byte CONTEXT from a QEMUCPUState note."""
    ctx = CONTEXT_AMD64_STRUCT.parse(bytes(CONTEXT_AMD64_SIZE))
    for note_name, ctx_name in _NOTE_TO_CONTEXT.items():
        ctx[ctx_name] = getattr(cpu, note_name)
    ctx.ContextFlags = CONTEXT_WRITTEN
    ctx.EFlags = cpu.rflags & 0xFFFFFFFF
    ctx.SegCs, ctx.SegDs, ctx.SegEs = cpu.cs.selector & 0xFFFF, cpu.ds.selector & 0xFFFF, cpu.es.selector & 0xFFFF
    ctx.SegFs, ctx.SegGs, ctx.SegSs = cpu.fs.selector & 0xFFFF, cpu.gs.selector & 0xFFFF, cpu.ss.selector & 0xFFFF
    ctx.MxCsr = MXCSR_DEFAULT
    ctx.FltSave.MxCsr = MXCSR_DEFAULT
    ctx.FltSave.MxCsr_Mask = 0xFFFF
    ctx.FltSave.ControlWord = FPU_CONTROL_DEFAULT
    return CONTEXT_AMD64_STRUCT.build(ctx)


def context_problem(raw: bytes) -> str | None:
    """Why a 0x4D0-byte AMD64 CONTEXT is not one Windows could have written, or None when it could be.

    The checks `info` applies to a header context (wincrash.describe.context): SegCs a Windows code selector
    (0x10 kernel, 0x33 user, 0x23 WOW64 user: KGDT64_* in the public ntddk/winnt headers), and with
    CONTEXT_FLOATING_POINT set, MxCsr mirrored in FltSave.MxCsr (WinDbg compares them).
    """
    ctx = CONTEXT_AMD64_STRUCT.parse(raw[:CONTEXT_AMD64_SIZE].ljust(CONTEXT_AMD64_SIZE, b"\0"))
    if ctx.SegCs not in (0x10, 0x33, 0x23):
        return f"CS 0x{ctx.SegCs:x} is not a Windows code selector"
    if ctx.ContextFlags & CONTEXT_FLOATING_POINT == CONTEXT_FLOATING_POINT and ctx.MxCsr != ctx.FltSave.MxCsr:
        return f"MxCsr 0x{ctx.MxCsr:x} differs from FltSave.MxCsr 0x{ctx.FltSave.MxCsr:x}"
    return None
