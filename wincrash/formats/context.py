"""Windows CONTEXT records as WinDbg reads them from the dump header and from KPRCB.Context:
AMD64 (0x4D0 bytes), ARM64 (ARM64_NT_CONTEXT, 0x390 bytes) and x86 (0x2CC bytes), per winnt.h.

The layout is fixed by the Windows ABI; offsets matter more than names, so each one used by
wincrash is listed in tests/unit/formats/test_dump_structs.py.
"""

from __future__ import annotations

from construct import Array, Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from wincrash.formats.layout import check_layout

CONTEXT_AMD64_SIZE = 0x4D0

# ContextFlags bits (CONTEXT_AMD64 = 0x100000).
CONTEXT_AMD64 = 0x00100000
CONTEXT_CONTROL = CONTEXT_AMD64 | 0x1
CONTEXT_INTEGER = CONTEXT_AMD64 | 0x2
CONTEXT_SEGMENTS = CONTEXT_AMD64 | 0x4
CONTEXT_FLOATING_POINT = CONTEXT_AMD64 | 0x8
CONTEXT_DEBUG_REGISTERS = CONTEXT_AMD64 | 0x10
CONTEXT_FULL = CONTEXT_CONTROL | CONTEXT_INTEGER | CONTEXT_FLOATING_POINT
CONTEXT_ALL = CONTEXT_FULL | CONTEXT_SEGMENTS | CONTEXT_DEBUG_REGISTERS

MXCSR_DEFAULT = 0x1F80  # all SSE exceptions masked, round to nearest: what Windows threads start with
FPU_CONTROL_DEFAULT = 0x027F  # x87 control word Windows x64 uses

M128A = Struct("Low" / Int64ul, "High" / Int64ul)

XMM_SAVE_AREA32 = Struct(
    "ControlWord" / Int16ul,  # 0x00
    "StatusWord" / Int16ul,  # 0x02
    "TagWord" / Int8ul,  # 0x04
    "Reserved1" / Int8ul,  # 0x05
    "ErrorOpcode" / Int16ul,  # 0x06
    "ErrorOffset" / Int32ul,  # 0x08
    "ErrorSelector" / Int16ul,  # 0x0C
    "Reserved2" / Int16ul,  # 0x0E
    "DataOffset" / Int32ul,  # 0x10
    "DataSelector" / Int16ul,  # 0x14
    "Reserved3" / Int16ul,  # 0x16
    "MxCsr" / Int32ul,  # 0x18
    "MxCsr_Mask" / Int32ul,  # 0x1C
    "FloatRegisters" / Array(8, M128A),  # 0x20
    "XmmRegisters" / Array(16, M128A),  # 0xA0
    "Reserved4" / Bytes(96),  # 0x1A0
)  # 0x200

GPR_NAMES = ("Rax", "Rcx", "Rdx", "Rbx", "Rsp", "Rbp", "Rsi", "Rdi",
             "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")

CONTEXT_AMD64_STRUCT = Struct(
    "P1Home" / Int64ul, "P2Home" / Int64ul, "P3Home" / Int64ul,
    "P4Home" / Int64ul, "P5Home" / Int64ul, "P6Home" / Int64ul,  # 0x00
    "ContextFlags" / Int32ul,  # 0x30
    "MxCsr" / Int32ul,  # 0x34
    "SegCs" / Int16ul,  # 0x38
    "SegDs" / Int16ul,  # 0x3A
    "SegEs" / Int16ul,  # 0x3C
    "SegFs" / Int16ul,  # 0x3E
    "SegGs" / Int16ul,  # 0x40
    "SegSs" / Int16ul,  # 0x42
    "EFlags" / Int32ul,  # 0x44
    "Dr0" / Int64ul, "Dr1" / Int64ul, "Dr2" / Int64ul, "Dr3" / Int64ul,  # 0x48
    "Dr6" / Int64ul, "Dr7" / Int64ul,  # 0x68
    *[name / Int64ul for name in GPR_NAMES],  # 0x78 .. 0xF0
    "Rip" / Int64ul,  # 0xF8
    "FltSave" / XMM_SAVE_AREA32,  # 0x100
    "VectorRegister" / Array(26, M128A),  # 0x300
    "VectorControl" / Int64ul,  # 0x4A0
    "DebugControl" / Int64ul,  # 0x4A8
    "LastBranchToRip" / Int64ul,  # 0x4B0
    "LastBranchFromRip" / Int64ul,  # 0x4B8
    "LastExceptionToRip" / Int64ul,  # 0x4C0
    "LastExceptionFromRip" / Int64ul,  # 0x4C8
)  # 0x4D0

# --- layout checks at import (winnt.h; kdmp-parser static_asserts CONTEXT at 0x4D0) ----------------
check_layout("XMM_SAVE_AREA32", XMM_SAVE_AREA32, 0x200, {"MxCsr": 0x18, "FloatRegisters": 0x20, "XmmRegisters": 0xA0})
check_layout("CONTEXT", CONTEXT_AMD64_STRUCT, CONTEXT_AMD64_SIZE, {
    "ContextFlags": 0x30, "MxCsr": 0x34, "SegCs": 0x38, "SegSs": 0x42, "EFlags": 0x44, "Dr0": 0x48, "Rax": 0x78,
    "Rsp": 0x98, "R15": 0xF0, "Rip": 0xF8, "FltSave": 0x100, "VectorRegister": 0x300, "VectorControl": 0x4A0,
    "LastExceptionFromRip": 0x4C8,
})

# --------------------------------------------------------------------------- ARM64 (winnt.h ARM64_NT_CONTEXT)

CONTEXT_ARM64_SIZE = 0x390
CONTEXT_ARM64 = 0x00400000  # ContextFlags architecture bit
CONTEXT_ARM64_CONTROL = CONTEXT_ARM64 | 0x1  # Fp, Lr, Sp, Pc, Cpsr
CONTEXT_ARM64_INTEGER = CONTEXT_ARM64 | 0x2  # X0-X28
ARM64_MAX_BREAKPOINTS = 8
ARM64_MAX_WATCHPOINTS = 2

CONTEXT_ARM64_STRUCT = Struct(
    "ContextFlags" / Int32ul,  # 0x000
    "Cpsr" / Int32ul,  # 0x004 (PSTATE: NZCV, DAIF, mode bits M[4:0])
    "X" / Array(29, Int64ul),  # 0x008 X0-X28
    "Fp" / Int64ul,  # 0x0F0 X29
    "Lr" / Int64ul,  # 0x0F8 X30
    "Sp" / Int64ul,  # 0x100
    "Pc" / Int64ul,  # 0x108
    "V" / Array(32, M128A),  # 0x110 NEON registers
    "Fpcr" / Int32ul,  # 0x310
    "Fpsr" / Int32ul,  # 0x314
    "Bcr" / Array(ARM64_MAX_BREAKPOINTS, Int32ul),  # 0x318
    "Bvr" / Array(ARM64_MAX_BREAKPOINTS, Int64ul),  # 0x338
    "Wcr" / Array(ARM64_MAX_WATCHPOINTS, Int32ul),  # 0x378
    "Wvr" / Array(ARM64_MAX_WATCHPOINTS, Int64ul),  # 0x380
)  # 0x390
assert CONTEXT_ARM64_STRUCT.sizeof() == CONTEXT_ARM64_SIZE

# --------------------------------------------------------------------------- x86 (winnt.h CONTEXT for i386)

CONTEXT_X86_SIZE = 0x2CC
CONTEXT_I386 = 0x00010000  # ContextFlags architecture bit
SIZE_OF_80387_REGISTERS = 80
MAXIMUM_SUPPORTED_EXTENSION = 512

FLOATING_SAVE_AREA = Struct(
    "ControlWord" / Int32ul, "StatusWord" / Int32ul, "TagWord" / Int32ul,  # 0x00
    "ErrorOffset" / Int32ul, "ErrorSelector" / Int32ul,  # 0x0C
    "DataOffset" / Int32ul, "DataSelector" / Int32ul,  # 0x14
    "RegisterArea" / Bytes(SIZE_OF_80387_REGISTERS),  # 0x1C
    "Cr0NpxState" / Int32ul,  # 0x6C
)  # 0x70

CONTEXT_X86_STRUCT = Struct(
    "ContextFlags" / Int32ul,  # 0x00
    "Dr0" / Int32ul, "Dr1" / Int32ul, "Dr2" / Int32ul, "Dr3" / Int32ul,  # 0x04
    "Dr6" / Int32ul, "Dr7" / Int32ul,  # 0x14
    "FloatSave" / FLOATING_SAVE_AREA,  # 0x1C
    "SegGs" / Int32ul, "SegFs" / Int32ul, "SegEs" / Int32ul, "SegDs" / Int32ul,  # 0x8C
    "Edi" / Int32ul, "Esi" / Int32ul, "Ebx" / Int32ul,  # 0x9C
    "Edx" / Int32ul, "Ecx" / Int32ul, "Eax" / Int32ul,  # 0xA8
    "Ebp" / Int32ul,  # 0xB4
    "Eip" / Int32ul,  # 0xB8
    "SegCs" / Int32ul,  # 0xBC
    "EFlags" / Int32ul,  # 0xC0
    "Esp" / Int32ul,  # 0xC4
    "SegSs" / Int32ul,  # 0xC8
    "ExtendedRegisters" / Bytes(MAXIMUM_SUPPORTED_EXTENSION),  # 0xCC (FXSAVE image)
)  # 0x2CC
assert CONTEXT_X86_STRUCT.sizeof() == CONTEXT_X86_SIZE
