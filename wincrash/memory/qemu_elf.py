"""The layout of a QEMU `dump-guest-memory` ELF core: RAM segments and per-vCPU register notes.

Only headers and notes are read (a few KiB), never the memory, so this is instant on any size.
The segments say where each guest-physical range lives in the file, which is what lets the
converter copy memory with copy_file_range instead of page by page.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from construct import Container

from wincrash.errors import WincrashError
from wincrash.formats.elf import (
    DESC_B_MASK,
    DESC_L_MASK,
    ELF64_EHDR_SIZE,
    ELF64_NHDR_SIZE,
    ELF64_PHDR_SIZE,
    ELFCLASS64,
    EM_386,
    EM_X86_64,
    ET_CORE,
    NT_PRSTATUS,
    PT_LOAD,
    PT_NOTE,
    QEMU_CPUSTATE_SIZE,
    QEMU_NOTE_TYPE,
    X86_64_PRSTATUS_SIZE,
    Elf64_Ehdr,
    Elf64_Nhdr,
    Elf64_Phdr,
    QEMUCPUState,
    X86_64_ElfPrstatus,
    note_pad,
)
from wincrash.memory.missing import paging_segments
from wincrash.memory.segments import MemoryMap, Segment

__all__ = ["ElfLayout", "QemuElf", "Segment", "cpu_mode", "cpu_summary", "machine_name", "read_elf_layout"]

MAX_NOTES_BYTES = 64 << 20  # a 4096-vCPU guest needs ~3 MiB of notes; more means a corrupt header
MAX_PHDRS = 4096
# vCPU notes accepted at most, per note type: QEMU's q35 machine allows max_cpus 4096 (hw/i386/pc_q35.c,
# QEMU 9.0 and later; 1024 before), which is also the largest KVM_MAX_VCPUS on x86 (Linux
# CONFIG_KVM_MAX_NR_VCPUS, at most 4096). More notes than that is not a QEMU dump of a real guest.
MAX_VCPU_NOTES = 4096
CR0_PE = 1


@dataclass
class ElfLayout:
    """Everything QEMU's ELF header and notes say about the guest."""

    machine: int
    segments: list[Segment]
    cpus: list[Container] = field(default_factory=list)  # QEMUCPUState v1, one per vCPU, in order
    prstatus: list[Container] = field(default_factory=list)
    file_size: int = 0
    vaddrs: list[int] = field(default_factory=list)  # p_vaddr of each PT_LOAD (all 0 in a paging=false dump)

    @property
    def missing_ranges(self) -> list[tuple[int, int]]:
        """Guest-physical ranges the segments promise but the (truncated) file does not hold."""
        return [(s.paddr + s.filesz, s.paddr + s.size) for s in self.segments if s.filesz < s.size]


def cpu_mode(cpu: Container) -> str:
    """'long', 'protected' or 'real': what the vCPU was running when the dump was taken."""
    if not cpu.cr[0] & CR0_PE:
        return "real"
    if cpu.cs.flags & DESC_L_MASK:
        return "long"
    return "protected" if cpu.cs.flags & DESC_B_MASK else "protected-16"


def read_elf_layout(fh: BinaryIO, file_size: int) -> ElfLayout:
    """Parse the ELF header, program headers and notes; raise WincrashError when it is not a core."""
    raw = os.pread(fh.fileno(), ELF64_EHDR_SIZE, 0)
    if len(raw) < ELF64_EHDR_SIZE:
        raise WincrashError(f"truncated ELF file: {len(raw)} bytes, the ELF header needs {ELF64_EHDR_SIZE}")
    if raw[4] != ELFCLASS64:
        raise WincrashError("32-bit ELF (ELFCLASS32): not a QEMU x86_64 memory dump")
    ehdr = Elf64_Ehdr.parse(raw)
    if ehdr.e_type != ET_CORE:
        raise WincrashError(f"ELF file of type {ehdr.e_type}, not a core dump (ET_CORE): not a memory dump")
    if ehdr.e_phnum == 0 or ehdr.e_phnum > MAX_PHDRS or ehdr.e_phentsize != ELF64_PHDR_SIZE:
        raise WincrashError(f"ELF core with {ehdr.e_phnum} program headers of {ehdr.e_phentsize} bytes: malformed")
    if ehdr.e_phoff + ehdr.e_phnum * ELF64_PHDR_SIZE > file_size:
        raise WincrashError(f"truncated or damaged ELF file: {ehdr.e_phnum} program headers at offset "
                            f"0x{ehdr.e_phoff:x} run past the end of the file ({file_size:,} bytes)")
    table = os.pread(fh.fileno(), ehdr.e_phnum * ELF64_PHDR_SIZE, ehdr.e_phoff)
    layout = ElfLayout(machine=ehdr.e_machine, segments=[], file_size=file_size)
    for i in range(ehdr.e_phnum):
        ph = Elf64_Phdr.parse(table[i * ELF64_PHDR_SIZE:(i + 1) * ELF64_PHDR_SIZE])
        if ph.p_type == PT_LOAD and ph.p_memsz:
            present = max(0, min(ph.p_filesz, file_size - ph.p_offset))
            layout.segments.append(Segment(ph.p_paddr, ph.p_memsz, ph.p_offset, min(present, ph.p_memsz)))
            layout.vaddrs.append(ph.p_vaddr)
        elif ph.p_type == PT_NOTE:
            _read_notes(fh, ph, layout)
    layout.segments.sort(key=lambda s: s.paddr)
    return layout


def _read_notes(fh: BinaryIO, ph: Container, layout: ElfLayout) -> None:
    if ph.p_filesz > MAX_NOTES_BYTES:
        raise WincrashError(f"ELF note segment of {ph.p_filesz:,} bytes at offset 0x{ph.p_offset:x}: malformed")
    if ph.p_offset + ph.p_filesz > layout.file_size:
        raise WincrashError(f"truncated or damaged ELF file: the note segment at offset 0x{ph.p_offset:x} "
                            f"({ph.p_filesz:,} bytes) runs past the end of the file ({layout.file_size:,} bytes)")
    data = os.pread(fh.fileno(), ph.p_filesz, ph.p_offset)
    for pos, name, note_type, desc in iter_notes(data):
        if name == b"QEMU" and note_type == QEMU_NOTE_TYPE and len(desc) >= QEMU_CPUSTATE_SIZE:
            layout.cpus.append(QEMUCPUState.parse(desc))
        elif name == b"CORE" and note_type == NT_PRSTATUS and len(desc) >= X86_64_PRSTATUS_SIZE:
            layout.prstatus.append(X86_64_ElfPrstatus.parse(desc))
        if max(len(layout.cpus), len(layout.prstatus)) > MAX_VCPU_NOTES:
            raise WincrashError(f"ELF core with more than {MAX_VCPU_NOTES} vCPU notes (QEMU and KVM allow "
                                f"{MAX_VCPU_NOTES} vCPUs at most): malformed notes at offset 0x{ph.p_offset + pos:x}")


def iter_notes(data: bytes) -> Iterator[tuple[int, bytes, int, bytes]]:
    """(offset in ``data``, name without NULs, n_type, descriptor) of each ELF note in a note area.

    Elf64_Nhdr, then the name and the descriptor, each padded to 4 bytes (ELF gABI). A note that runs
    past the end of ``data`` ends the walk: what was complete is kept (an interrupted dump). Used for
    QEMU's ELF notes and for the same notes in kdump's note area.
    """
    pos = 0
    while pos + ELF64_NHDR_SIZE <= len(data):
        nh = Elf64_Nhdr.parse(data[pos:pos + ELF64_NHDR_SIZE])
        name_at = pos + ELF64_NHDR_SIZE
        desc_at = name_at + nh.n_namesz + note_pad(nh.n_namesz)
        end = desc_at + nh.n_descsz + note_pad(nh.n_descsz)
        if desc_at + nh.n_descsz > len(data):
            return  # a truncated note: keep what was complete
        yield pos, data[name_at:name_at + nh.n_namesz].rstrip(b"\0"), nh.n_type, data[desc_at:desc_at + nh.n_descsz]
        pos = end

def machine_name(machine: int) -> str:
    """x86_64 / i386 / the raw number."""
    return {EM_X86_64: "x86_64", EM_386: "i386"}.get(machine, f"e_machine {machine}")


def cpu_summary(index: int, cpu: Container) -> dict[str, Any]:
    """One vCPU's registers as info shows them."""
    return {
        "cpu": index,
        "mode": cpu_mode(cpu),
        "ring": cpu.cs.selector & 3,
        "rip": f"0x{cpu.rip:x}",
        "rsp": f"0x{cpu.rsp:x}",
        "cr3": f"0x{cpu.cr[3]:x}",
        "gs_base": f"0x{cpu.gs.base:x}",
        "kernel_gs_base": f"0x{cpu.kernel_gs_base:x}",
        "idt_base": f"0x{cpu.idt.base:x}",
    }


class QemuElf:
    """Container format: a QEMU `dump-guest-memory` ELF core (PT_LOAD per RAM block, QEMU CPU notes)."""

    kind = "qemu-elf"

    @staticmethod
    def detect(head: bytes, size: int) -> bool:
        """ELF magic at offset 0."""
        return head[:4] == b"\x7fELF"

    @staticmethod
    def map(path: Path, fh: BinaryIO, size: int) -> MemoryMap:
        """The PT_LOAD segments and vCPU notes; WincrashError when the core holds no memory."""
        layout = read_elf_layout(fh, size)
        if not layout.segments:
            raise WincrashError(f"{path}: ELF core without memory segments")
        paging = paging_segments(list(layout.segments))
        if paging is not None and not any(layout.vaddrs):
            # Overlapping PT_LOADs without virtual addresses: not paging=true (QEMU writes p_vaddr 0 only
            # without paging, dump/dump.c), but segments that alias each other: a damaged header.
            return MemoryMap(QemuElf.kind, paging[0], tuple(layout.cpus), layout.machine, None, (
                "the ELF's PT_LOAD segments overlap in guest-physical memory although the dump was taken without "
                "paging (every p_vaddr is 0): a damaged header; where they alias, the first segment's bytes are "
                "used and memory no segment holds is written as zeros",))
        if paging is not None:  # paging=true: PT_LOADs per virtual mapping, overlapping in physical memory
            return MemoryMap(f"{QemuElf.kind} (paging)", paging[0], tuple(layout.cpus), layout.machine, None,
                             (paging[1],))
        return MemoryMap(QemuElf.kind, list(layout.segments), tuple(layout.cpus), layout.machine,
                         tuple(layout.missing_ranges))
