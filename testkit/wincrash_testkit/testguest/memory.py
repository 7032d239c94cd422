"""Guest RAM for the Windows-like test guest: a page map laid out as a sparse raw file.

QEMU maps the file as guest RAM (memory-backend-file, share=off: the file itself is never written),
so whatever page map we are given (a hand-made one here, or the synthetic Windows memory of
wincrash_testkit.synth) is in guest RAM at its physical addresses from the first instruction on.

The firmware needs a little RAM of its own (stacks, a lock word) and needs to run with CR3 = the
image's DTB. We take free pages at the top of low RAM, and point PML4[0] of the DTB (the user half,
empty in a kernel address space) at an identity map of the low GiBs made of 2 MiB pages. Kernel
virtual addresses, and so everything a converter looks at, are unchanged.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wincrash_testkit.testguest.stub import NMI_HANDLER, StubConfig

PAGE = 0x1000
GIB = 1 << 30
_P, _RW, _US, _PS, _NX = 0x1, 0x2, 0x4, 0x80, 1 << 63


@dataclass
class GuestMemory:
    """Inputs for the test guest: physical pages plus the ground truth the firmware needs."""

    pages: dict[int, bytes]  # pfn -> 4096 bytes
    dtb: int  # physical address of the PML4
    gs_bases: list[int]  # per-CPU KPCR virtual addresses
    bugcheck_pa: int  # physical address of KiBugcheckData
    bugcheck_va: int | None = None  # its kernel VA: the firmware stores through it when given
    truth: dict[str, object] = field(default_factory=dict)  # anything else callers want to check
    gdt_vas: list[int] = field(default_factory=list)  # per CPU, optional: load the guest's own GDT
    idt_vas: list[int] = field(default_factory=list)  # per CPU, optional: load the guest's own IDT


def low_memory_end(ram_size: int) -> int:
    """Where RAM below 4 GiB ends on QEMU's pc (i440fx) machine; the rest is mapped from 4 GiB up."""
    return 0xC0000000 if ram_size >= 0xE0000000 else ram_size


def phys_to_file_offset(pa: int, ram_size: int) -> int:
    """File offset of guest-physical ``pa`` in the RAM backing file (pc machine layout)."""
    low = low_memory_end(ram_size)
    if pa < low:
        return pa
    if pa >= 1 << 32 and pa - (1 << 32) < ram_size - low:
        return low + pa - (1 << 32)
    raise ValueError(f"physical address {pa:#x} is not RAM in a {ram_size:#x}-byte pc guest")


def _page_in_ram(pfn: int, ram_size: int) -> bool:
    try:
        phys_to_file_offset(pfn * PAGE, ram_size)
        return True
    except ValueError:
        return False


def translate(pages: Mapping[int, bytes], dtb: int, va: int) -> int:
    """4-level x64 walk over a page map (4 KiB, 2 MiB and 1 GiB pages)."""
    table = dtb
    for level, shift in enumerate((39, 30, 21, 12)):
        page = pages.get(table // PAGE)
        if page is None:
            raise ValueError(f"page table at {table:#x} for VA {va:#x} is not in the page map")
        entry = struct.unpack_from("<Q", page, ((va >> shift) & 0x1FF) * 8)[0]
        if not entry & _P:
            raise ValueError(f"VA {va:#x} is not mapped")
        base = entry & 0x000FFFFFFFFFF000
        if level in (1, 2) and entry & _PS:
            return (base & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
        table = base
    return table | (va & 0xFFF)


def _nmi_gate() -> bytes:
    """An interrupt gate to the firmware's NMI handler through Windows' kernel CS (0x10), no IST."""
    attrs = (0xE << 8) | (1 << 15)
    return ((NMI_HANDLER & 0xFFFF) | (0x10 << 16) | (attrs << 32) | (((NMI_HANDLER >> 16) & 0xFFFF) << 48)
            ).to_bytes(8, "little") + (NMI_HANDLER >> 32).to_bytes(4, "little") + bytes(4)


def layout_ram(mem: GuestMemory, ram_size: int, bugcheck: tuple[int, ...] | None = None
               ) -> tuple[dict[int, bytes], StubConfig]:
    """All pages guest RAM must hold (the image plus the firmware's), and the firmware configuration."""
    ncpus = len(mem.gs_bases)
    bad = [pfn for pfn in mem.pages if not _page_in_ram(pfn, ram_size) or 0xA0 <= pfn < 0x100]
    if bad:
        raise ValueError(f"{len(bad)} pages lie outside RAM or in the legacy VGA/ROM hole, e.g. pfn {bad[0]:#x}")
    dtb_pfn = mem.dtb // PAGE
    if dtb_pfn not in mem.pages:
        raise ValueError(f"the DTB page {mem.dtb:#x} is not in the page map")
    pml4 = bytearray(mem.pages[dtb_pfn])
    # The firmware runs at 0xF0000 and keeps its stacks/lock in the first GiB, identity mapped through
    # PML4[0] -> PDPT[0] (user space: Windows maps KUSER_SHARED_DATA at 0x7FFE0000, which is PDPT[1]).
    pml4e = struct.unpack_from("<Q", pml4, 0)[0]
    pdpt_existing = pml4e & 0x000FFFFFFFFFF000 if pml4e & _P else None
    if pdpt_existing is not None:
        if pdpt_existing // PAGE not in mem.pages:
            raise ValueError("PML4[0] points at a PDPT that is not in the page map")
        if struct.unpack_from("<Q", mem.pages[pdpt_existing // PAGE], 0)[0]:
            raise ValueError("VAs 0-1 GiB are mapped in the DTB; the test guest firmware needs them")
    wanted = (0 if pdpt_existing is not None else 1) + 1 + ncpus + 1  # [PDPT], PD, stacks, lock
    # The highest run of free pages below min(end of low RAM, 1 GiB).
    pfn = min(low_memory_end(ram_size), GIB) // PAGE
    run: list[int] = []
    while len(run) < wanted:
        pfn -= 1
        if pfn < 0x100:
            raise ValueError("no room for the test guest firmware's pages in low RAM")
        run = [] if pfn in mem.pages else [pfn, *run]
    pages = dict(mem.pages)
    if pdpt_existing is None:
        pdpt_pfn, run = run[0], run[1:]
        pdpt = bytearray(PAGE)
        struct.pack_into("<Q", pml4, 0, pdpt_pfn * PAGE | _P | _RW | _US)
    else:
        pdpt_pfn = pdpt_existing // PAGE
        pdpt = bytearray(mem.pages[pdpt_pfn])
    pd_pfn, stack_pfn, lock_pfn = run[0], run[1], run[-1]
    struct.pack_into("<Q", pdpt, 0, pd_pfn * PAGE | _P | _RW | _US)
    pages[pdpt_pfn] = bytes(pdpt)
    pages[pd_pfn] = b"".join(struct.pack("<Q", (i * 0x200000) | _P | _RW | _PS) for i in range(512))
    for p in run[1:]:
        pages[p] = bytes(PAGE)  # stacks and the lock word start zeroed
    pages[dtb_pfn] = bytes(pml4)
    for idt_va in set(mem.idt_vas) - {0}:  # vector 2 -> our handler; vector 0 (kernel finding) untouched
        pa = translate(pages, mem.dtb, idt_va + 2 * 16)
        page = bytearray(pages[pa // PAGE])
        page[pa % PAGE:pa % PAGE + 16] = _nmi_gate()
        pages[pa // PAGE] = bytes(page)
    for p, data in pages.items():
        if len(data) != PAGE:
            raise ValueError(f"page {p:#x} holds {len(data)} bytes, not {PAGE}")
    kw = {"bugcheck_code": bugcheck[0], "bugcheck_params": tuple(bugcheck[1:5])} if bugcheck else {}
    if mem.bugcheck_va is None and mem.bugcheck_pa >= GIB:
        raise ValueError("KiBugcheckData above 1 GiB needs its VA (bugcheck_va)")
    return pages, StubConfig(dtb=mem.dtb, gs_bases=list(mem.gs_bases), bugcheck_pa=mem.bugcheck_va or mem.bugcheck_pa,
                             stack_pa=stack_pfn * PAGE, lock_pa=lock_pfn * PAGE, gdt_vas=list(mem.gdt_vas),
                             idt_vas=list(mem.idt_vas), **kw)


def build_ram_file(mem: GuestMemory, path: Path, ram_size: int, bugcheck: tuple[int, ...] | None = None) -> StubConfig:
    """Write the sparse RAM file (for memory-backend-file) and return the firmware configuration."""
    pages, cfg = layout_ram(mem, ram_size, bugcheck)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, ram_size)
        for p, data in pages.items():
            os.pwrite(fd, data, phys_to_file_offset(p * PAGE, ram_size))
    finally:
        os.close(fd)
    return cfg


def build_loader_blobs(mem: GuestMemory, directory: Path, ram_size: int,
                       bugcheck: tuple[int, ...] | None = None) -> tuple[list[tuple[Path, int]], StubConfig]:
    """One raw blob per run of contiguous pages, for ``-device loader,file=...,addr=...,force-raw=on``.

    For when we do not own QEMU's memory options (a libvirt domain); QEMU copies the blobs into RAM
    at reset, after which our firmware (which touches nothing else) starts.
    """
    pages, cfg = layout_ram(mem, ram_size, bugcheck)
    blobs: list[tuple[Path, int]] = []
    pfns = sorted(pages)
    start = 0
    for i in range(1, len(pfns) + 1):
        if i == len(pfns) or pfns[i] != pfns[i - 1] + 1:
            run = pfns[start:i]
            blob = directory / f"ram-{run[0] * PAGE:x}.bin"
            blob.write_bytes(b"".join(pages[p] for p in run))
            blobs.append((blob, run[0] * PAGE))
            start = i
    return blobs, cfg


def trivial_memory(ncpus: int = 1) -> GuestMemory:
    """A hand-made minimal "kernel": a DTB mapping KPCRs and KiBugcheckData at Windows-like VAs.

    Enough for the capture tests (CR3, GS base, the bugcheck store); the synthetic Windows memory
    of wincrash_testkit.synth replaces it where a converter has to find a real-looking kernel.
    """
    kva = 0xFFFFF80000000000  # PML4 index 0x1F0
    dtb, pdpt, pd, pt = 0x1AA000, 0x1AB000, 0x1AC000, 0x1AD000
    data_pfn = 0x1B0  # KiBugcheckData page, then one KPCR page per CPU
    pages: dict[int, bytes] = {}
    pml4 = bytearray(PAGE)
    struct.pack_into("<Q", pml4, 0x1F0 * 8, pdpt | _P | _RW)
    struct.pack_into("<Q", pml4, 0x1ED * 8, dtb | _P | _RW | _NX)  # the self-map entry Windows has
    pages[dtb // PAGE] = bytes(pml4)
    pages[pdpt // PAGE] = struct.pack("<Q", pd | _P | _RW).ljust(PAGE, b"\0")
    pages[pd // PAGE] = struct.pack("<Q", pt | _P | _RW).ljust(PAGE, b"\0")
    ptes = bytearray(PAGE)
    gs_bases = []
    for i in range(1 + ncpus):
        struct.pack_into("<Q", ptes, i * 8, (data_pfn + i) * PAGE | _P | _RW | _NX)
    pages[pt // PAGE] = bytes(ptes)
    pages[data_pfn] = bytes(PAGE)
    for cpu in range(ncpus):
        va = kva + (1 + cpu) * PAGE
        kpcr = bytearray(PAGE)
        struct.pack_into("<QQ", kpcr, 0x18, va, va + 0x180)  # KPCR.Self, KPCR.CurrentPrcb
        pages[data_pfn + 1 + cpu] = bytes(kpcr)
        gs_bases.append(va)
    return GuestMemory(pages=pages, dtb=dtb, gs_bases=gs_bases, bugcheck_pa=data_pfn * PAGE, bugcheck_va=kva,
                       truth={"KiBugcheckData_va": kva})


def from_page_map(pages: Mapping[int, bytes], dtb: int, gs_bases: list[int], bugcheck_pa: int) -> GuestMemory:
    """Adapter for other page-map producers."""
    return GuestMemory(pages=dict(pages), dtb=dtb, gs_bases=list(gs_bases), bugcheck_pa=bugcheck_pa)


def synth_memory(build: int = 19041, cpus: int = 2, ram_mib: int = 256, seed: int = 1) -> GuestMemory:
    """The synthetic Windows of wincrash_testkit.synth, not crashed: the firmware's NMI handler does the crashing.

    Each vCPU loads that Windows' own GDT and IDT (vector 2 patched to the firmware's handler), so a
    converter finds the kernel through the IDT exactly as on a real guest.
    """
    from wincrash_testkit.synth.guest import GuestSpec, generate

    guest = generate(GuestSpec(build=build, cpus=cpus, ram_mib=ram_mib, seed=seed, crashed=False))
    procs = guest.truth["processors"]
    dtb = int(guest.truth["dtb"])
    ram_size = ram_mib << 20
    # Firmware-area decoys (pages in the VGA/option-ROM window, the BIOS ROM below 4 GiB) cannot be RAM
    # content in a pc machine; Windows does not own them, so leaving them out changes nothing it sees.
    pages, dropped = {}, []
    for pfn, data in guest.mem.pages.items():
        if 0xA0 <= pfn < 0x100 or not _page_in_ram(pfn, ram_size):
            dropped.append(pfn)
        else:
            pages[pfn] = bytes(data)
    guest.truth["testguest_dropped_pfns"] = sorted(dropped)
    bugcheck_pa = translate(pages, dtb, int(guest.truth["bugcheck"]["va"]))
    return GuestMemory(pages=pages, dtb=dtb, gs_bases=[int(p["kpcr"]) for p in procs], bugcheck_pa=bugcheck_pa,
                       bugcheck_va=int(guest.truth["bugcheck"]["va"]),
                       truth=guest.truth, gdt_vas=[int(p["gdt"]) for p in procs],
                       idt_vas=[int(p["idt"]) for p in procs])
