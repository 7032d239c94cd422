"""x64 4-level page tables built into the sparse page map, with Windows' self-referencing PML4 entry.

Windows maps its own PML4 into itself at one slot (0x1ED before Windows 10 1607, random since), which
fixes PTE_BASE; both 4 KiB and 2 MiB (PS) mappings are used, and the NX bit (63) is set on data so a
walker that forgets to mask high bits is caught.
"""

from __future__ import annotations

import struct

from wincrash_testkit.synth.physmem import LARGE, PAGE, PageMap, PhysAllocator

P, RW, US, PWT, PCD, A, D, PS, G = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63
ADDR_MASK = 0x000F_FFFF_FFFF_F000
TABLE_FLAGS = P | RW | A | D
KERNEL_CODE = P | A | G  # read-only, executable
KERNEL_DATA = P | RW | A | D | G | NX


def canonical(va: int) -> int:
    """Sign-extend a 48-bit virtual address."""
    va &= (1 << 48) - 1
    return va | 0xFFFF_0000_0000_0000 if va & (1 << 47) else va


def indexes(va: int) -> tuple[int, int, int, int]:
    return (va >> 39) & 0x1FF, (va >> 30) & 0x1FF, (va >> 21) & 0x1FF, (va >> 12) & 0x1FF


def pte_base(self_ref: int) -> int:
    """MmPteBase for a self-reference slot (0x1ED gives Windows 7's 0xFFFFF68000000000)."""
    return canonical(self_ref << 39)


class AddressSpace:
    """One x64 address space (the kernel half Windows shares between processes)."""

    def __init__(self, mem: PageMap, alloc: PhysAllocator, self_ref: int | None, self_ref_nx: bool,
                 dtb: int | None = None) -> None:
        """``self_ref=None`` builds a space without a self-reference entry (Hyper-V's own address space);
        ``dtb``: the physical address of an already claimed page for the PML4 (default: a fresh random page)."""
        self.mem = mem
        self.alloc = alloc
        self.self_ref = self_ref
        self.dtb = alloc.page() if dtb is None else dtb
        mem.page(self.dtb // PAGE)
        if self_ref is not None:
            self._set(self.dtb, self_ref, self.dtb | TABLE_FLAGS | (NX if self_ref_nx else 0))
        self.small: dict[int, int] = {}  # va page -> pa page
        self.large: dict[int, int] = {}  # 2 MiB va -> pa

    def _set(self, table: int, index: int, value: int) -> None:
        self.mem.write(table + index * 8, struct.pack("<Q", value))

    def _get(self, table: int, index: int) -> int:
        return self.mem.read_u64(table + index * 8)

    def _next(self, table: int, index: int, user: bool = False) -> int:
        entry = self._get(table, index)
        if entry & P:
            if entry & PS:
                raise ValueError("address already mapped by a large page")
            return entry & ADDR_MASK
        new = self.alloc.page()
        self.mem.page(new // PAGE)
        self._set(table, index, new | TABLE_FLAGS | (US if user else 0))
        return new

    def reserve_slot(self, slot: int) -> int:
        """Create the PDPT of one kernel PML4 slot without mapping anything yet; returns its physical address.

        Windows creates every kernel-half PML4 entry at boot (so processes can share them), each region in its
        own slot: present, writable, supervisor, executable at this level (the leaves carry NX).
        """
        if slot == self.self_ref or not 0x100 <= slot < 0x200:
            raise ValueError(f"PML4 slot {slot:#x} is not a free kernel slot")
        return self._next(self.dtb, slot)

    def pdpt(self, slot: int) -> int | None:
        """Physical address of the PDPT behind one PML4 slot, None when the slot is empty."""
        entry = self._get(self.dtb, slot)
        return entry & ADDR_MASK if entry & P else None

    def kernel_half(self) -> list[tuple[int, int]]:
        """(slot, entry) of every present kernel-half PML4 entry except the self-reference."""
        entries = ((i, self._get(self.dtb, i)) for i in range(0x100, 0x200) if i != self.self_ref)
        return [(i, e) for i, e in entries if e & P]

    def share_kernel_half(self, system: AddressSpace) -> None:
        """Copy ``system``'s kernel-half PML4 entries into this (process) PML4, as process creation does."""
        for slot, entry in system.kernel_half():
            self._set(self.dtb, slot, entry)

    def map_4k(self, va: int, pa: int, flags: int = KERNEL_DATA) -> None:
        i4, i3, i2, i1 = indexes(va)
        if i4 == self.self_ref:
            raise ValueError("cannot map inside the self-reference slot")
        user = i4 < 0x100
        pdpt = self._next(self.dtb, i4, user)
        pd = self._next(pdpt, i3, user)
        pt = self._next(pd, i2, user)
        self._set(pt, i1, (pa & ADDR_MASK) | flags)
        self.small[va & ~0xFFF] = pa & ~0xFFF

    def map_2m(self, va: int, pa: int, flags: int = KERNEL_DATA) -> None:
        if va % LARGE or pa % LARGE:
            raise ValueError("2 MiB pages need 2 MiB alignment")
        i4, i3, i2, _ = indexes(va)
        pdpt = self._next(self.dtb, i4)
        pd = self._next(pdpt, i3)
        if self._get(pd, i2) & P:
            raise ValueError("already mapped")
        self._set(pd, i2, (pa & ADDR_MASK) | flags | PS)
        self.large[va] = pa

    def map_new(self, va: int, npages: int, flags: int = KERNEL_DATA) -> list[int]:
        """Map npages fresh random physical pages at va; returns their physical addresses."""
        pas = []
        for i in range(npages):
            pa = self.alloc.page()
            self.map_4k(va + i * PAGE, pa, flags)
            pas.append(pa)
        return pas

    def translate(self, va: int) -> int | None:
        pa = self.small.get(va & ~0xFFF)
        if pa is not None:
            return pa | (va & 0xFFF)
        pa = self.large.get(va & ~(LARGE - 1))
        if pa is not None:
            return pa | (va & (LARGE - 1))
        return None

    def pa(self, va: int) -> int:
        pa = self.translate(va)
        if pa is None:
            raise ValueError(f"virtual address {va:#x} is not mapped")
        return pa

    def write(self, va: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            n = min(PAGE - (va + pos) % PAGE, len(data) - pos)
            self.mem.write(self.pa(va + pos), data[pos:pos + n])
            pos += n

    def read(self, va: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            n = min(PAGE - (va + len(out)) % PAGE, size - len(out))
            out += self.mem.read(self.pa(va + len(out)), n)
        return bytes(out)

    def write_u64(self, va: int, value: int) -> None:
        self.write(va, struct.pack("<Q", value))

    def write_u32(self, va: int, value: int) -> None:
        self.write(va, struct.pack("<I", value))


class VaAllocator:
    """A bump allocator of kernel virtual memory (pool-like), mapping fresh pages as it grows."""

    def __init__(self, space: AddressSpace, base: int) -> None:
        self.space = space
        self.next = base
        self.mapped_end = base

    def alloc(self, size: int, align: int = 16) -> int:
        va = -(-self.next // align) * align
        end = va + size
        while self.mapped_end < end:
            self.space.map_new(self.mapped_end, 1)
            self.mapped_end += PAGE
        self.next = end
        return va

    def alloc_pages(self, npages: int) -> int:
        return self.alloc(npages * PAGE, PAGE)

    def skip(self, size: int) -> None:
        """Leave an unmapped gap, as real pool address ranges are not contiguous."""
        self.next = -(-(max(self.next, self.mapped_end) + size) // PAGE) * PAGE
        self.mapped_end = self.next
