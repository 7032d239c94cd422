"""The generator's working state: the seeded RNG, physical memory, NT's address space and the truth so far.

Each stage module (kernel, objects, system, processors, debugger, noise, hyperv) is a set of functions
that take this Builder, write guest memory through it and record what they placed in ``truth``; the order
they run in (wincrash_testkit.synth.guest.generate) is part of the output, since they share one RNG.
"""

from __future__ import annotations

import random

from wincrash_testkit.synth import pe
from wincrash_testkit.synth.builds import KUSER_SHARED_DATA_VA, WindowsBuild, get_build
from wincrash_testkit.synth.cpu import CpuState
from wincrash_testkit.synth.layout import MIB, carve_hyperv, make_layout
from wincrash_testkit.synth.paging import AddressSpace, VaAllocator, canonical
from wincrash_testkit.synth.physmem import LARGE, PAGE, PageMap, PhysAllocator
from wincrash_testkit.synth.spec import GuestSpec

SYSTEM_PML4_PFNS = (0x1A0, 0x1B8)  # System's PML4 page: 0x1aa000/0x1ad000 on real Windows 10 (range, pfn)
MMPFN_SIZE = 0x30  # sizeof(_MMPFN) on x64 (bytes)
KASLR_REGIONS = ("nonpaged_pool", "paged_pool", "pfn_database", "system_ptes", "system_cache", "session_space")
# Windows 7 / 8.1 x64 kernel address space (fixed; Windows Internals 6th ed., "x64 system address space").
# Nonpaged pool sits 1 TiB above the PFN database here (a slot of its own).
WIN7_REGIONS = {"hyperspace": 0xFFFFF70000000000, "system_ptes": 0xFFFFF88000000000,
                "paged_pool": 0xFFFFF8A000000000, "session_space": 0xFFFFF90000000000,
                "system_cache": 0xFFFFF98000000000, "pfn_database": 0xFFFFFA8000000000,
                "nonpaged_pool": 0xFFFFFB8000000000}


class Builder:
    """Shared state of one generation run (mutable by design: the stages fill it in turn)."""

    # Set by the stages, in this order: build_space, kernel.plan_kernel, objects.*, system.*, processors.
    self_ref: int
    space: AddressSpace
    pool: VaAllocator
    regions: dict[str, int]
    pfn_database: int
    kern_base: int
    size_of_image: int
    sections: list[pe.Section]
    text: tuple[int, int]  # .text (first rva, end rva)
    exports_rva: int
    debug_rva: int
    extras_rva: int
    extras_used: int
    pcr0_rva: int
    kernel_pas: list[int]
    header_page: bytes
    modules: list[dict]
    process_spaces: list[AddressSpace]  # each listed process's own PML4 (System's is ``space``)
    idle_process: int
    system_process: int
    highest_page_var: int
    cpu_states: list[CpuState]

    def __init__(self, spec: GuestSpec) -> None:
        spec.validate()
        self.spec = spec
        self.wb: WindowsBuild = get_build(spec.build)
        self.rng = random.Random(f"wincrash-synth/{spec.seed}/{spec.build}/{spec.cpus}/{spec.ram_mib}")
        self.layout = make_layout(spec.ram_mib * MIB, self.rng)
        if spec.hyperv:
            self.layout, self.hv_range, self.sk_range = carve_hyperv(self.layout, self.rng)
        self.nt_contexts: list[dict] = []
        self.mem = PageMap()
        self.alloc = PhysAllocator(list(self.layout.windows_runs), self.rng)
        self.truth: dict = {}

    def _pml4_slot(self, taken: set[int]) -> int:
        while True:
            slot = self.rng.randrange(0x100, 0x1EF)
            if slot not in taken:
                taken.add(slot)
                return slot

    def build_space(self) -> None:
        """NT's page tables: the System PML4 low in RAM, the self-reference, one PML4 slot per kernel region.

        The System PML4 is page SYSTEM_PML4_PFNS (0x1a0-0x1b7, where Windows 10 puts it and volatility3 looks
        for it first). Regions (``self.regions``, region -> base VA) as Windows 7/8.1 fix them, or one random
        slot each from Windows 10 1607 (KASLR): nonpaged and paged pool, PFN database, system PTEs, system
        cache, session space; with the kernel image's and KUSER_SHARED_DATA's slots that makes >= 6
        supervisor entries besides the self-map, as MemProcFS requires of a DTB. The PFN database is mapped
        (2 MiB pages, MMPFN_SIZE bytes per physical page up to the highest one), its contents left zero, and
        so is the initial nonpaged pool (2 MiB pages, RAM/64 clamped to 8..128 MiB, at the region's base;
        the pool allocator ``pool`` hands out 4 KiB pages above it). A kernel memory dump of a real system is
        never small; LeechCore refuses dump files under 16 MiB.
        """
        taken = {0x1EF, 0x1F0, 0x1F1, 0x1F5}  # KUSER_SHARED_DATA, kernel/drivers, Win7 drivers, Win7 pool
        if self.spec.build >= 14393:
            self.self_ref = self._pml4_slot(taken)
        else:
            self.self_ref = 0x1ED
            taken.add(0x1ED)
        dtb = self.alloc.take(self.rng.randrange(*SYSTEM_PML4_PFNS) * PAGE)
        self.space = AddressSpace(self.mem, self.alloc, self.self_ref, self_ref_nx=self.spec.build >= 9600, dtb=dtb)
        initial_pool = min(max(self.layout.ram_bytes // 64, 8 * MIB), 128 * MIB) // LARGE * LARGE
        if self.spec.build >= 14393:
            self.regions = {name: canonical(self._pml4_slot(taken) << 39) for name in KASLR_REGIONS}
            pool_gap = self.rng.randrange(0x100, 0x7000000) * PAGE
        else:
            self.regions = dict(WIN7_REGIONS)
            pool_gap = self.rng.randrange(0x100, 0x100000) * PAGE
        pool_base = self.regions["nonpaged_pool"] + initial_pool + pool_gap
        self.pfn_database = self.regions["pfn_database"]
        for va in (*self.regions.values(), KUSER_SHARED_DATA_VA, 0xFFFFF80000000000):
            slot = (va >> 39) & 0x1FF
            if not self.space.pdpt(slot):
                self.space.reserve_slot(slot)
        pfn_bytes = (self.layout.highest_page + 1) * MMPFN_SIZE
        for i in range(-(-pfn_bytes // LARGE)):
            self.space.map_2m(self.pfn_database + i * LARGE, self.alloc.large())
        for i in range(initial_pool // LARGE):
            self.space.map_2m(self.regions["nonpaged_pool"] + i * LARGE, self.alloc.large())
        self.truth["initial_nonpaged_pool"] = {"va": self.regions["nonpaged_pool"], "size": initial_pool}
        self.pool = VaAllocator(self.space, pool_base)

    def sym(self, name: str) -> int:
        """Virtual address of a kernel symbol (its real RVA in this build + the kernel base)."""
        return self.kern_base + self.wb.rvas[name]

    def extra(self, size: int) -> int:
        """A kernel variable this build's PDB does not list, in .data's spare page."""
        va = self.kern_base + self.extras_rva + self.extras_used
        self.extras_used += -(-size // 8) * 8
        assert self.extras_used <= PAGE
        return va

    def string(self, text: str) -> tuple[int, int]:
        """A NUL-terminated UTF-16 string in pool: (virtual address, length in bytes without the NUL)."""
        raw = text.encode("utf-16-le")
        va = self.pool.alloc(len(raw) + 2)
        self.space.write(va, raw + b"\x00\x00")
        return va, len(raw)

    def link_list(self, head: int, entries: list[int]) -> None:
        """Circular doubly linked LIST_ENTRY chain: head <-> entries[0] <-> ... <-> head."""
        chain = [head, *entries]
        for i, node in enumerate(chain):
            self.space.write_u64(node, chain[(i + 1) % len(chain)])
            self.space.write_u64(node + 8, chain[i - 1])
