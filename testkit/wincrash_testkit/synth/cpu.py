"""vCPU state as QEMU records it in its 'QEMU' (QEMUCPUState v1) and 'CORE' (NT_PRSTATUS) notes.

Segment flags are QEMU's SegmentCache.flags: the descriptor's high dword bits (type, S, DPL, P, L, D/B, G),
e.g. 0x209B00 for Windows' 64-bit kernel code segment 0x10.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wincrash.formats.elf import DESC_B_MASK, DESC_G_MASK, DESC_L_MASK, DESC_P_MASK, DESC_S_MASK

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
        "r15")


def _flags(type_: int, dpl: int, *extra: int) -> int:
    out = DESC_P_MASK | DESC_S_MASK | (dpl << 13) | (type_ << 8)
    for bit in extra:
        out |= bit
    return out


KERNEL_CS_FLAGS = _flags(0xB, 0, DESC_L_MASK)  # 0x209B00
KERNEL_SS_FLAGS = _flags(0x3, 0, DESC_B_MASK)  # 0x409300
USER_DATA_FLAGS = _flags(0x3, 3, DESC_B_MASK, DESC_G_MASK)  # 0xCFF300
USER_TEB32_FLAGS = _flags(0x3, 3, DESC_B_MASK)  # 0x40F300
TSS_BUSY_FLAGS = DESC_P_MASK | (0xB << 8)  # 0x8B00


@dataclass
class Segment:
    selector: int
    limit: int
    flags: int
    base: int

    def to_dict(self) -> dict[str, int]:
        return {"selector": self.selector, "limit": self.limit, "flags": self.flags, "base": self.base}


@dataclass
class CpuState:
    index: int
    regs: dict[str, int]  # rax..r15, rip, rflags
    segments: dict[str, Segment]  # cs ds es fs gs ss ldt tr gdt idt
    cr: list[int] = field(default_factory=lambda: [0] * 5)
    kernel_gs_base: int = 0

    def to_dict(self) -> dict:
        return {"index": self.index, "registers": dict(self.regs),
                "segments": {k: v.to_dict() for k, v in self.segments.items()}, "cr": list(self.cr),
                "kernel_gs_base": self.kernel_gs_base}


def kernel_segments(kpcr: int, gdt: int, idt: int, tss: int) -> dict[str, Segment]:
    """Segment registers of a Windows x64 vCPU running kernel code."""
    return {
        "cs": Segment(0x10, 0, KERNEL_CS_FLAGS, 0),
        "ds": Segment(0x2B, 0xFFFFFFFF, USER_DATA_FLAGS, 0),
        "es": Segment(0x2B, 0xFFFFFFFF, USER_DATA_FLAGS, 0),
        "fs": Segment(0x53, 0x3C00, USER_TEB32_FLAGS, 0),
        "gs": Segment(0x2B, 0xFFFFFFFF, USER_DATA_FLAGS, kpcr),
        "ss": Segment(0x18, 0, KERNEL_SS_FLAGS, 0),
        "ldt": Segment(0, 0, 0, 0),
        "tr": Segment(0x40, 0x67, TSS_BUSY_FLAGS, tss),
        "gdt": Segment(0, 0x7F, 0, gdt),
        "idt": Segment(0, 0xFFF, 0, idt),
    }


def gdt_bytes(tss: int) -> bytes:
    """Windows x64 GDT (0x80 bytes): R0 code 0x10, R0 data 0x18, R3 code32 0x20, R3 data 0x28,
    R3 code64 0x30, TSS 0x40 (16 bytes), R3 TEB32 0x50."""
    entries = [0] * 16
    entries[0x10 // 8] = 0x00209B0000000000
    entries[0x18 // 8] = 0x0040930000000000
    entries[0x20 // 8] = 0x00CFFB000000FFFF
    entries[0x28 // 8] = 0x00CFF3000000FFFF
    entries[0x30 // 8] = 0x0020FB0000000000
    entries[0x50 // 8] = 0x0040F30000003C00
    limit = 0x67
    low = (limit & 0xFFFF) | ((tss & 0xFFFF) << 16) | (((tss >> 16) & 0xFF) << 32) | (0x8B << 40) \
        | (((tss >> 24) & 0xFF) << 56)
    entries[0x40 // 8] = low
    entries[0x48 // 8] = tss >> 32
    return b"".join(e.to_bytes(8, "little") for e in entries)


def idt_entry(handler: int, ist: int = 0, dpl: int = 0) -> bytes:
    """A KIDTENTRY64 interrupt gate to ``handler`` through the kernel code segment."""
    attrs = (ist & 7) | (0xE << 8) | (dpl << 13) | (1 << 15)
    return ((handler & 0xFFFF) | (0x10 << 16) | (attrs << 32) | (((handler >> 16) & 0xFFFF) << 48)).to_bytes(
        8, "little") + ((handler >> 32) & 0xFFFFFFFF).to_bytes(4, "little") + bytes(4)
