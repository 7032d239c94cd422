"""Firmware for the Windows-like test guest: a 64 KiB ``-bios`` ROM assembled with binutils.

Why our own firmware rather than SeaBIOS plus a boot sector: SeaBIOS writes its tables into low and
high RAM, which would overwrite parts of the synthetic Windows memory we load. Our ROM touches no
RAM except the stub area the memory builder reserved (stacks, a lock word).

What it does, on every vCPU: real mode -> protected mode (the bootstrap CPU also wakes the others
with INIT-SIPI-SIPI; they start in the ROM's 0xF0000 alias) -> long mode with CR3 = the image's DTB
(whose PML4[0] the memory builder pointed at an identity map of RAM and the ROM), GS base = that
CPU's KPCR, an IDT whose NMI handler does what Windows does on an NMI crash (the first CPU in fills
KiBugcheckData with the bugcheck code and parameters and signals pvpanic), then ``cli; hlt`` forever.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROM_SIZE = 0x10000
ROM_LINEAR = 0xF0000  # the ROM's alias below 1 MiB, where SIPI can start the other CPUs
PVPANIC_PORT = 0x505
MAX_CPUS = 16
NMI_HANDLER_OFFSET = 0x8000  # fixed, so the memory builder can point a guest IDT's vector 2 at it
NMI_HANDLER = ROM_LINEAR + NMI_HANDLER_OFFSET


@dataclass(frozen=True)
class StubConfig:
    """Everything the ROM needs to know, baked in as constants (a ROM cannot be written)."""

    dtb: int
    gs_bases: list[int]  # one KPCR virtual address per vCPU, indexed by APIC ID
    bugcheck_pa: int  # where the handler stores KiBugcheckData (5 x u64): its VA, or PA below 1 GiB
    stack_pa: int  # first of len(gs_bases) stack pages (identity mapped)
    lock_pa: int  # a zeroed u32: the first CPU into the NMI handler takes it
    bugcheck_code: int = 0x80
    bugcheck_params: tuple[int, int, int, int] = (0x4F4454, 0, 0, 0)
    gdt_vas: list[int] = field(default_factory=list)  # per CPU: the guest's own GDT (Windows selectors), or 0
    idt_vas: list[int] = field(default_factory=list)  # per CPU: the guest's own IDT (vector 2 patched), or 0


def _asm_source(cfg: StubConfig) -> str:
    ncpus = len(cfg.gs_bases)
    if not 1 <= ncpus <= MAX_CPUS:
        raise ValueError(f"1..{MAX_CPUS} CPUs supported, not {ncpus}")
    gs_table = "\n".join(f"    .quad {base:#x}" for base in cfg.gs_bases)
    gdt_table = "\n".join(f"    .quad {va:#x}" for va in (cfg.gdt_vas or [0] * ncpus))
    idt_table = "\n".join(f"    .quad {va:#x}" for va in (cfg.idt_vas or [0] * ncpus))
    p1, p2, p3, p4 = cfg.bugcheck_params
    return f"""
    .set DTB, {cfg.dtb:#x}
    .set NCPUS, {ncpus}
    .set STACK_PA, {cfg.stack_pa:#x}
    .set LOCK_PA, {cfg.lock_pa:#x}
    .set BUGCHECK_PA, {cfg.bugcheck_pa:#x}
    .set ROM, {ROM_LINEAR:#x}

    .section .text
    .globl start16
    .code16
start16:                        # CS base 0xF0000 on every CPU from here on
    cli
    cld
    lgdtl %cs:(gdt_desc - start16)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $start32

    .code32
start32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $1, %eax               # APIC ID: CPUID.1:EBX[31:24]
    cpuid
    shrl $24, %ebx
    movl %ebx, %edi             # edi = CPU index for the whole boot
    testl %edi, %edi
    jnz 1f
    movl $NCPUS, %eax           # the BSP wakes the others (they start at 0xF000:0000 = start16)
    cmpl $1, %eax
    je 1f
    movl $0x000C4500, 0xFEE00300   # INIT, all excluding self
    movl $200000, %ecx
2:  pause
    loop 2b
    movl $0x000C4600 | (ROM >> 12), 0xFEE00300   # SIPI
    movl $200000, %ecx
3:  pause
    loop 3b
    movl $0x000C4600 | (ROM >> 12), 0xFEE00300   # SIPI again, as the MP spec says
1:
    movl $0x1FF, 0xFEE000F0     # local APIC on (SVR), so that LVT writes stick
    movl $0x400, 0xFEE00360     # LINT1 = NMI, unmasked: QEMU's inject-nmi arrives through LINT1
    movl %cr4, %eax
    orl $0x20 | 0x200 | 0x400, %eax   # PAE, OSFXSR, OSXMMEXCPT (Windows-like)
    movl %eax, %cr4
    movl $DTB, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx      # EFER: LME | SCE | NXE
    rdmsr
    orl $0x100 | 0x1 | 0x800, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010000, %eax       # PG | WP
    movl %eax, %cr0
    ljmpl $0x18, $start64

    .code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movl %edi, %eax             # rsp = top of this CPU's stack page
    incq %rax
    shlq $12, %rax
    addq $STACK_PA, %rax
    movq %rax, %rsp
    lidt idt_desc(%rip)         # our own IDT first; the guest's below if it has one
    leaq gdt_table(%rip), %rbx  # the guest's GDT, with Windows' selectors (CS 0x10, SS 0x18, DS 0x2B)
    movq (%rbx,%rdi,8), %rax
    testq %rax, %rax
    jz 4f
    subq $16, %rsp
    movw $0x7F, (%rsp)
    movq %rax, 2(%rsp)
    lgdt (%rsp)
    addq $16, %rsp
    pushq $0x10
    leaq 5f(%rip), %rax
    pushq %rax
    lretq
5:  movw $0x18, %ax
    movw %ax, %ss
    movw $0x2B, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %gs
    movw $0x53, %ax
    movw %ax, %fs
4:
    leaq gs_table(%rip), %rbx   # GS base = this CPU's KPCR (after loading GS, which clears it)
    movq (%rbx,%rdi,8), %rax
    movq %rax, %rdx
    shrq $32, %rdx
    movl $0xC0000101, %ecx
    wrmsr
    leaq idt_table(%rip), %rbx
    movq (%rbx,%rdi,8), %rax
    testq %rax, %rax
    jz 6f
    subq $16, %rsp
    movw $0xFFF, (%rsp)
    movq %rax, 2(%rsp)
    lidt (%rsp)
    addq $16, %rsp
6:
    movq %rdi, %rax             # recognisable registers for the dump checks
    movabsq $0x57494E4352415348, %r15    # 'WINCRASH'
idle:
    hlt                         # IF is clear: only an NMI gets us out of here
    jmp idle

    .org {NMI_HANDLER_OFFSET:#x}
nmi_handler:
    movl $1, %eax
    xchgl %eax, LOCK_PA         # first CPU in wins, as in KeBugCheckEx
    testl %eax, %eax
    jnz dead
    movabsq $BUGCHECK_PA, %rbx
    movq ${cfg.bugcheck_code:#x}, %rax
    movq %rax, 0(%rbx)
    movabsq ${p1:#x}, %rax
    movq %rax, 8(%rbx)
    movabsq ${p2:#x}, %rax
    movq %rax, 16(%rbx)
    movabsq ${p3:#x}, %rax
    movq %rax, 24(%rbx)
    movabsq ${p4:#x}, %rax
    movq %rax, 32(%rbx)
    mfence
    movw ${PVPANIC_PORT:#x}, %dx
    movb $1, %al                # pvpanic: guest panicked
    outb %al, %dx
dead:
    cli
    hlt
    jmp dead

    .balign 8
gs_table:
{gs_table}
gdt_table:
{gdt_table}
idt_table:
{idt_table}

    .balign 16
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF    # 0x08 code32
    .quad 0x00CF92000000FFFF    # 0x10 data
    .quad 0x00AF9A000000FFFF    # 0x18 code64
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    .balign 16
idt:
    .fill 2 * 16, 1, 0          # vectors 0, 1
    .word (nmi_handler - start16) + (ROM & 0xFFFF)   # vector 2: NMI (offset 15:0)
    .word 0x18
    .byte 0, 0x8E
    .word (ROM >> 16) & 0xFFFF  # offset 31:16 (the ROM alias is below 1 MiB)
    .long 0, 0
idt_end:
idt_desc:
    .word idt_end - idt - 1
    .quad idt

    .code16
    .org 0xFFF0
reset:                          # the BSP starts here at 0xFFFFFFF0 (CS base 0xFFFF0000)
    ljmp $0xF000, $0
    .org 0x10000
"""


def build_rom(cfg: StubConfig, workdir: Path | None = None) -> bytes:
    """Assemble and link the ROM with binutils; returns exactly ROM_SIZE bytes."""
    for tool in ("as", "ld", "objcopy"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"binutils '{tool}' is needed to build the test guest firmware")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src, obj, elf, rom = (Path(tmp) / n for n in ("stub.S", "stub.o", "stub.elf", "stub.rom"))
        src.write_text(_asm_source(cfg))
        subprocess.run(["as", "--64", "-o", obj, src], check=True, capture_output=True, text=True)
        subprocess.run(["ld", "-m", "elf_x86_64", "-Ttext", hex(ROM_LINEAR), "-e", "start16", "-o", elf, obj],
                       check=True, capture_output=True, text=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", elf, rom], check=True, capture_output=True)
        data = rom.read_bytes()
    if len(data) != ROM_SIZE:
        raise RuntimeError(f"test guest ROM is {len(data)} bytes, expected {ROM_SIZE}")
    return data
