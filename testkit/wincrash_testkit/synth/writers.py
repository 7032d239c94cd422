"""Write a synthetic guest as QEMU `dump-guest-memory paging=false` ELF, or as a raw physical image.

Only pages that hold data are written (pwrite at their offsets); everything else is a hole left by the
final ftruncate, so a 64 GiB guest takes seconds and almost no disk. The ELF follows QEMU 7.2's layout
byte for byte: Ehdr (e_ehsize 8, as QEMU writes it), PT_NOTE then PT_LOADs, all 'CORE' notes then all
'QEMU' notes, memory right after the notes (not page aligned, as in QEMU).
"""

from __future__ import annotations

import os
from typing import BinaryIO

from wincrash.formats import elf
from wincrash_testkit.synth.cpu import CpuState
from wincrash_testkit.synth.physmem import PAGE
from wincrash_testkit.synth.spec import Guest


def _qemu_note(cpu: CpuState) -> bytes:
    r, seg = cpu.regs, cpu.segments
    state = {"version": elf.QEMU_CPUSTATE_VERSION, "size": elf.QEMU_CPUSTATE_SIZE,
             **{name: r[name] for name in elf.QEMU_GPR_NAMES}, "rip": r["rip"], "rflags": r["rflags"],
             **{name: dict(seg[name].to_dict(), pad=0) for name in elf.QEMU_SEGMENT_NAMES},
             "cr": cpu.cr, "kernel_gs_base": cpu.kernel_gs_base}
    return _note(elf.NOTE_NAME_QEMU, elf.QEMU_NOTE_TYPE, elf.QEMUCPUState.build(state))


def _prstatus_note(cpu: CpuState) -> bytes:
    r, seg = cpu.regs, cpu.segments
    regs = {name: r.get(name, 0) for name in elf.USER_REGS_NAMES}
    regs.update(orig_rax=r["rax"], eflags=r["rflags"], cs=seg["cs"].selector, ss=seg["ss"].selector,
                ds=seg["ds"].selector, es=seg["es"].selector, fs=seg["fs"].selector, gs=seg["gs"].selector,
                fs_base=seg["fs"].base, gs_base=seg["gs"].base)
    desc = elf.X86_64_ElfPrstatus.build({"pad1": bytes(32), "pid": cpu.index + 1, "pad2": bytes(76),
                                         "regs": regs, "pad3": bytes(8)})
    return _note(elf.NOTE_NAME_CORE, elf.NT_PRSTATUS, desc)


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    head = elf.Elf64_Nhdr.build({"n_namesz": len(name), "n_descsz": len(desc), "n_type": ntype})
    return head + name + bytes(elf.note_pad(len(name))) + desc + bytes(elf.note_pad(len(desc)))


def elf_layout(guest: Guest) -> tuple[bytes, list[tuple[int, int, int]], int]:
    """(header bytes incl. phdrs and notes, [(paddr, size, file offset)], total file size)."""
    notes = b"".join(_prstatus_note(c) for c in guest.cpus) + b"".join(_qemu_note(c) for c in guest.cpus)
    blocks = guest.layout.elf_blocks
    phnum = 1 + len(blocks)
    note_offset = elf.ELF64_EHDR_SIZE + elf.ELF64_PHDR_SIZE * phnum
    offset = note_offset + len(notes)
    placed = []
    for paddr, size in blocks:
        placed.append((paddr, size, offset))
        offset += size
    ehdr = elf.Elf64_Ehdr.build({
        "e_ident": {"ei_class": elf.ELFCLASS64, "ei_data": elf.ELFDATA2LSB, "ei_version": elf.EV_CURRENT,
                    "ei_osabi": 0, "ei_abiversion": 0},
        "e_type": elf.ET_CORE, "e_machine": elf.EM_X86_64, "e_version": elf.EV_CURRENT, "e_entry": 0,
        "e_phoff": elf.ELF64_EHDR_SIZE, "e_shoff": 0, "e_flags": 0, "e_ehsize": elf.QEMU_EHSIZE,
        "e_phentsize": elf.ELF64_PHDR_SIZE, "e_phnum": phnum, "e_shentsize": 0, "e_shnum": 0, "e_shstrndx": 0})
    phdrs = [elf.Elf64_Phdr.build({"p_type": elf.PT_NOTE, "p_flags": 0, "p_offset": note_offset, "p_vaddr": 0,
                                   "p_paddr": 0, "p_filesz": len(notes), "p_memsz": len(notes), "p_align": 0})]
    phdrs += [elf.Elf64_Phdr.build({"p_type": elf.PT_LOAD, "p_flags": 0, "p_offset": off, "p_vaddr": 0,
                                    "p_paddr": paddr, "p_filesz": size, "p_memsz": size, "p_align": 0})
              for paddr, size, off in placed]
    return ehdr + b"".join(phdrs) + notes, placed, offset


def _write_pages(fd: int, guest: Guest, placed: list[tuple[int, int, int]]) -> int:
    written = 0
    pieces = [(pfn, lambda pfn=pfn: guest.mem.pages[pfn]) for pfn in guest.mem.pages]
    pieces += [(pfn, lambda seed=seed: guest.mem.filler_bytes(seed)) for pfn, seed in guest.mem.filler.items()]
    for pfn, content in sorted(pieces, key=lambda x: x[0]):
        data = content()
        if not any(data):
            continue
        pa = pfn * PAGE
        for paddr, size, off in placed:
            if paddr <= pa and pa + len(data) <= paddr + size:
                os.pwrite(fd, data, off + pa - paddr)
                written += len(data) // PAGE
                break
        else:
            raise ValueError(f"page {pa:#x} lies outside guest RAM")
    return written


def write_qemu_elf(fh: BinaryIO, guest: Guest) -> int:
    """Write the ELF into an open, empty, writable file; returns its (sparse) size."""
    header, placed, total = elf_layout(guest)
    fd = fh.fileno()
    fh.flush()
    os.pwrite(fd, header, 0)
    _write_pages(fd, guest, placed)
    os.ftruncate(fd, total)
    return total


def write_raw(fh: BinaryIO, guest: Guest) -> int:
    """Write a raw physical image: file offset = guest-physical address, up to the end of the last RAM block."""
    placed = [(paddr, size, paddr) for paddr, size in guest.layout.elf_blocks]
    end = max(paddr + size for paddr, size in guest.layout.elf_blocks)
    fd = fh.fileno()
    fh.flush()
    _write_pages(fd, guest, placed)
    os.ftruncate(fd, end)
    return end
