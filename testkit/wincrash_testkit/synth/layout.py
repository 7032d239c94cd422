"""Where RAM is: QEMU's view (the ELF PT_LOAD blocks) and Windows' view (MmPhysicalMemoryBlock runs).

QEMU pc/q35 puts at most 2 GiB below 4 GiB and the rest at 4 GiB; the VGA window 0xA0000-0xC0000 is
not RAM, and the BIOS ROM sits at 0xFFFC0000. Windows leaves out page 0, the EBDA/ROM area below 1 MiB
and firmware-reserved ranges, so its runs differ from the ELF blocks: a faithful converter must use
Windows' runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from wincrash_testkit.synth.physmem import PAGE, PAGES_PER_LARGE

MIB = 1 << 20
GIB = 1 << 30
LOWMEM_MAX = 0x80000000
BIOS_ROM = (0xFFFC0000, 0x40000)
VGA_HOLE = (0xA0000, 0xC0000)
HIGHMEM_START = 0x100000000


@dataclass(frozen=True)
class RamLayout:
    ram_bytes: int
    elf_blocks: tuple[tuple[int, int], ...]  # (guest-physical address, size), as QEMU writes PT_LOADs
    windows_runs: tuple[tuple[int, int], ...]  # (BasePage, PageCount), as MmPhysicalMemoryBlock holds
    reserved: tuple[tuple[int, int], ...]  # (address, size) RAM QEMU dumps but Windows does not own

    @property
    def windows_pages(self) -> int:
        return sum(count for _, count in self.windows_runs)

    @property
    def highest_page(self) -> int:
        base, count = self.windows_runs[-1]
        return base + count - 1


def make_layout(ram_bytes: int, rng: random.Random) -> RamLayout:
    """QEMU-like RAM blocks and a Windows-like (different) run list of 3..8 runs."""
    if ram_bytes < 256 * MIB or ram_bytes % (2 * MIB):
        raise ValueError("RAM must be at least 256 MiB and a multiple of 2 MiB")
    low = min(ram_bytes, LOWMEM_MAX)
    high = ram_bytes - low
    blocks = [(0, VGA_HOLE[0]), (VGA_HOLE[1], low - VGA_HOLE[1]), BIOS_ROM]
    if high:
        blocks.append((HIGHMEM_START, high))
    low_pages = low // PAGE
    # Firmware keeps the top of low RAM (ACPI tables, NVS): 1..4 MiB.
    top_reserved = rng.randint(1, 4) * MIB // PAGE
    runs = [(0x1, 0x9F - 0x1)]  # page 0 and 0x9F000-0x100000 are not Windows'
    holes: list[tuple[int, int]] = []
    # 1..3 small firmware-reserved holes inside 1 MiB .. top of low RAM.
    lo, hi = 0x100, low_pages - top_reserved
    for _ in range(rng.randint(0, 2 if not high else 3)):
        size = rng.randint(0x10, 0x100)
        start = rng.randrange(lo + 0x800, hi - 0x800 - size)
        holes.append((start, size))
    holes.sort()
    cur = lo
    for start, size in holes:
        if start > cur:
            runs.append((cur, start - cur))
        cur = max(cur, start + size)
    runs.append((cur, hi - cur))
    if high:
        high_pages = high // PAGE
        if high_pages > 0x10000 and rng.random() < 0.5:  # a reserved hole above 4 GiB too
            cut = rng.randrange(0x4000, high_pages - 0x4000)
            gap = rng.randint(0x10, 0x200)
            runs.append((HIGHMEM_START // PAGE, cut))
            runs.append((HIGHMEM_START // PAGE + cut + gap, high_pages - cut - gap))
            holes.append((HIGHMEM_START // PAGE + cut, gap))
        else:
            runs.append((HIGHMEM_START // PAGE, high_pages))
    reserved = [(0, PAGE), (0x9F000, VGA_HOLE[0] - 0x9F000), (VGA_HOLE[1], 0x100000 - VGA_HOLE[1]),
                (hi * PAGE, top_reserved * PAGE)] + [(s * PAGE, n * PAGE) for s, n in holes]
    return RamLayout(ram_bytes=ram_bytes, elf_blocks=tuple(blocks), windows_runs=tuple(runs),
                     reserved=tuple(sorted(reserved)))


def carve_hyperv(layout: RamLayout, rng: random.Random) -> tuple[RamLayout, tuple[int, int], tuple[int, int]]:
    """Take the hypervisor's and the secure kernel's memory from the top of Windows' largest run.

    Returns the layout with the shortened run list and the two (first pfn, page count) ranges; they stay in
    QEMU's RAM blocks (QEMU dumps them) but are no longer Windows' (not in MmPhysicalMemoryBlock).
    """
    runs = list(layout.windows_runs)
    pick = max(range(len(runs)), key=lambda i: (runs[i][1], i))
    base, count = runs[pick]
    hv_pages = rng.randint(12, 24) * PAGES_PER_LARGE  # 24..48 MiB
    sk_pages = rng.randint(4, 8) * PAGES_PER_LARGE  # 8..16 MiB
    while hv_pages + sk_pages > count // 2:
        hv_pages, sk_pages = hv_pages // 2, sk_pages // 2
    end = base + count
    hv = (end - hv_pages, hv_pages)
    sk = (end - hv_pages - sk_pages, sk_pages)
    runs[pick] = (base, count - hv_pages - sk_pages)
    return replace(layout, windows_runs=tuple(runs)), hv, sk
