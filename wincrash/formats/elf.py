"""ELF64 core files as QEMU `dump-guest-memory` (paging=false) writes them for x86_64 guests.

Layout (QEMU 7.2, target/i386/arch_dump.c and dump/dump.c): Elf64_Ehdr, then the program headers
(phdr[0] PT_NOTE, then one PT_LOAD per guest RAM block with p_paddr = guest-physical address), then
the notes, then the memory. Notes: one 'CORE' NT_PRSTATUS per vCPU, then one 'QEMU' note (type 0)
per vCPU holding QEMUCPUState v1. QEMU writes e_ehsize wrongly (8), so readers must not validate it.
Pure data: no I/O.
"""

from __future__ import annotations

from construct import Array, Bytes, Const, Int8ul, Int16ul, Int32ul, Int64ul, Padding, Struct

from wincrash.formats.layout import check_layout

# --- constants -----------------------------------------------------------------------------------
ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_CORE = 4
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1
QEMU_NOTE_TYPE = 0  # QEMU's own note carries type 0
QEMU_EHSIZE = 8  # what QEMU writes in e_ehsize (should be 64): never validate it

ELF64_EHDR_SIZE = 64
ELF64_PHDR_SIZE = 56
ELF64_NHDR_SIZE = 12
QEMU_CPUSTATE_VERSION = 1
QEMU_CPUSTATE_SIZE = 440
X86_64_PRSTATUS_SIZE = 336
X86_64_PRSTATUS_REGS_OFFSET = 112
NOTE_NAME_CORE = b"CORE\x00"
NOTE_NAME_QEMU = b"QEMU\x00"

# QEMU's SegmentCache.flags hold the descriptor's high dword bits (target/i386/cpu.h).
DESC_G_MASK = 1 << 23
DESC_B_MASK = 1 << 22
DESC_L_MASK = 1 << 21
DESC_AVL_MASK = 1 << 20
DESC_P_MASK = 1 << 15
DESC_DPL_SHIFT = 13
DESC_S_MASK = 1 << 12
DESC_TYPE_SHIFT = 8

# --- ELF headers ---------------------------------------------------------------------------------
Elf64_Ehdr = Struct(
    "e_ident" / Struct(
        "magic" / Const(ELFMAG),  # 0x00
        "ei_class" / Int8ul,  # 0x04
        "ei_data" / Int8ul,  # 0x05
        "ei_version" / Int8ul,  # 0x06
        "ei_osabi" / Int8ul,  # 0x07
        "ei_abiversion" / Int8ul,  # 0x08
        Padding(7),
    ),
    "e_type" / Int16ul,  # 0x10
    "e_machine" / Int16ul,  # 0x12
    "e_version" / Int32ul,  # 0x14
    "e_entry" / Int64ul,  # 0x18
    "e_phoff" / Int64ul,  # 0x20
    "e_shoff" / Int64ul,  # 0x28
    "e_flags" / Int32ul,  # 0x30
    "e_ehsize" / Int16ul,  # 0x34
    "e_phentsize" / Int16ul,  # 0x36
    "e_phnum" / Int16ul,  # 0x38
    "e_shentsize" / Int16ul,  # 0x3A
    "e_shnum" / Int16ul,  # 0x3C
    "e_shstrndx" / Int16ul,  # 0x3E
)  # 0x40

Elf64_Phdr = Struct(
    "p_type" / Int32ul,  # 0x00
    "p_flags" / Int32ul,  # 0x04
    "p_offset" / Int64ul,  # 0x08
    "p_vaddr" / Int64ul,  # 0x10
    "p_paddr" / Int64ul,  # 0x18
    "p_filesz" / Int64ul,  # 0x20
    "p_memsz" / Int64ul,  # 0x28
    "p_align" / Int64ul,  # 0x30
)  # 0x38

Elf64_Nhdr = Struct(
    "n_namesz" / Int32ul,  # 0x0
    "n_descsz" / Int32ul,  # 0x4
    "n_type" / Int32ul,  # 0x8
)  # 0xC


def note_pad(size: int) -> int:
    """Bytes of padding after a note name or descriptor: ELF notes are 4-byte aligned (QEMU uses 4 too)."""
    return (-size) % 4


def note_size(namesz: int, descsz: int) -> int:
    """Total bytes of one note: header, padded name, padded descriptor."""
    return ELF64_NHDR_SIZE + namesz + note_pad(namesz) + descsz + note_pad(descsz)


# --- QEMU notes ----------------------------------------------------------------------------------
QEMUCPUSegment = Struct(
    "selector" / Int32ul,  # 0x00
    "limit" / Int32ul,  # 0x04
    "flags" / Int32ul,  # 0x08
    "pad" / Int32ul,  # 0x0C
    "base" / Int64ul,  # 0x10
)  # 0x18

QEMU_GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
QEMU_SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")

QEMUCPUState = Struct(
    "version" / Int32ul,  # 0x00
    "size" / Int32ul,  # 0x04
    *[name / Int64ul for name in QEMU_GPR_NAMES],  # 0x08 .. 0x80
    "rip" / Int64ul,  # 0x88
    "rflags" / Int64ul,  # 0x90
    *[name / QEMUCPUSegment for name in QEMU_SEGMENT_NAMES],  # 0x98 .. 0x188
    "cr" / Array(5, Int64ul),  # 0x188
    "kernel_gs_base" / Int64ul,  # 0x1B0
)  # 0x1B8 = 440

# Linux x86_64 struct user_regs_struct, in its order (27 u64).
USER_REGS_NAMES = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
                   "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base",
                   "ds", "es", "fs", "gs")

X86_64_UserRegs = Struct(*[name / Int64ul for name in USER_REGS_NAMES])  # 216 bytes

# QEMU's x86_64_elf_prstatus: what it fills is pid (its 1-based CPU index) and pr_reg.
X86_64_ElfPrstatus = Struct(
    "pad1" / Bytes(32),  # 0x00 (siginfo, cursig, ...)
    "pid" / Int32ul,  # 0x20
    "pad2" / Bytes(76),  # 0x24
    "regs" / X86_64_UserRegs,  # 0x70
    "pad3" / Bytes(8),  # 0x148
)  # 0x150 = 336

# --- layout checks at import (ELF gABI; QEMU target/i386/arch_dump.c) -----------------------------
check_layout("Elf64_Ehdr", Elf64_Ehdr, ELF64_EHDR_SIZE, {"e_type": 0x10, "e_phoff": 0x20, "e_phnum": 0x38})
check_layout("Elf64_Phdr", Elf64_Phdr, ELF64_PHDR_SIZE, {"p_offset": 0x8, "p_paddr": 0x18, "p_memsz": 0x28})
check_layout("Elf64_Nhdr", Elf64_Nhdr, ELF64_NHDR_SIZE)
check_layout("QEMUCPUSegment", QEMUCPUSegment, 0x18, {"base": 0x10})
check_layout("QEMUCPUState", QEMUCPUState, QEMU_CPUSTATE_SIZE, {"rip": 0x88, "cs": 0x98, "cr": 0x188,
                                                               "kernel_gs_base": 0x1B0})
check_layout("x86_64_elf_prstatus", X86_64_ElfPrstatus, X86_64_PRSTATUS_SIZE, {"pid": 0x20,
                                                                               "regs": X86_64_PRSTATUS_REGS_OFFSET})
