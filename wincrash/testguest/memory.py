"""Guest RAM for the Windows-like test guest: a page map laid out as a sparse raw file.

QEMU maps the file as guest RAM (memory-backend-file, share=off: the file itself is never written),
so whatever page map we are given (a hand-made one here, or the synthetic Windows memory of
wincrash.synth) is in guest RAM at its physical addresses from the first instruction on.

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

from wincrash.testguest.stub import StubConfig

PAGE = 0x1000
GIB = 1 << 30
_P, _RW, _PS, _NX = 0x1, 0x2, 0x80, 1 << 63


@dataclass
class GuestMemory:
    """Inputs for the test guest: physical pages plus the ground truth the firmware needs."""

    pages: dict[int, bytes]  # pfn -> 4096 bytes
    dtb: int  # physical address of the PML4
    gs_bases: list[int]  # per-CPU KPCR virtual addresses
    bugcheck_pa: int  # physical address of KiBugcheckData
    truth: dict[str, object] = field(default_factory=dict)  # anything else callers want to check


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
    if struct.unpack_from("<Q", pml4, 0)[0]:
        raise ValueError("PML4[0] of the DTB is in use; the test guest firmware needs it for its identity map")

    top = max([low_memory_end(ram_size)] + [(p + 1) * PAGE for p in mem.pages])
    gibs = max(4, -(-top // GIB))  # the ROM alias and the KiBugcheckData store need identity mapping
    wanted = 1 + gibs + ncpus + 1  # PDPT, PDs, stacks, lock
    # The highest run of free pages below the end of low RAM (the firmware uses absolute addresses).
    pfn = low_memory_end(ram_size) // PAGE
    run: list[int] = []
    while len(run) < wanted:
        pfn -= 1
        if pfn < 0x100:
            raise ValueError("no room for the test guest firmware's pages in low RAM")
        run = [] if pfn in mem.pages else [pfn, *run]
    pdpt_pfn, pd_pfns = run[0], run[1:1 + gibs]
    stack_pfn, lock_pfn = run[1 + gibs], run[-1]

    pages = dict(mem.pages)
    pages[pdpt_pfn] = b"".join(struct.pack("<Q", pd * PAGE | _P | _RW) for pd in pd_pfns).ljust(PAGE, b"\0")
    for g, pd in enumerate(pd_pfns):
        pages[pd] = b"".join(struct.pack("<Q", (g * GIB + i * 0x200000) | _P | _RW | _PS) for i in range(512))
    for p in run[1 + gibs:]:
        pages[p] = bytes(PAGE)  # stacks and the lock word start zeroed
    struct.pack_into("<Q", pml4, 0, pdpt_pfn * PAGE | _P | _RW)
    pages[dtb_pfn] = bytes(pml4)
    for p, data in pages.items():
        if len(data) != PAGE:
            raise ValueError(f"page {p:#x} holds {len(data)} bytes, not {PAGE}")
    kw = {"bugcheck_code": bugcheck[0], "bugcheck_params": tuple(bugcheck[1:5])} if bugcheck else {}
    return pages, StubConfig(dtb=mem.dtb, gs_bases=list(mem.gs_bases), bugcheck_pa=mem.bugcheck_pa,
                             stack_pa=stack_pfn * PAGE, lock_pa=lock_pfn * PAGE, **kw)


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
    of wincrash.synth replaces it where a converter has to find a real-looking kernel.
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
    return GuestMemory(pages=pages, dtb=dtb, gs_bases=gs_bases, bugcheck_pa=data_pfn * PAGE,
                       truth={"KiBugcheckData_va": kva})


def from_page_map(pages: Mapping[int, bytes], dtb: int, gs_bases: list[int], bugcheck_pa: int) -> GuestMemory:
    """Adapter for other page-map producers (e.g. wincrash.synth)."""
    return GuestMemory(pages=dict(pages), dtb=dtb, gs_bases=list(gs_bases), bugcheck_pa=bugcheck_pa)
