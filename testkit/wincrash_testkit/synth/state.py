"""The generator's working state: the seeded RNG, physical memory, NT's address space and the truth so far.

Each stage module (kernel, objects, system, processors, debugger, noise, hyperv) is a set of functions
that take this Builder, write guest memory through it and record what they placed in ``truth``; the order
they run in (wincrash_testkit.synth.guest.generate) is part of the output, since they share one RNG.
"""

from __future__ import annotations

import random

from wincrash_testkit.synth import pe
from wincrash_testkit.synth.builds import WindowsBuild, get_build
from wincrash_testkit.synth.cpu import CpuState
from wincrash_testkit.synth.layout import MIB, carve_hyperv, make_layout
from wincrash_testkit.synth.paging import AddressSpace, VaAllocator, canonical
from wincrash_testkit.synth.physmem import PAGE, PageMap, PhysAllocator
from wincrash_testkit.synth.spec import GuestSpec


class Builder:
    """Shared state of one generation run (mutable by design: the stages fill it in turn)."""

    # Set by the stages, in this order: build_space, kernel.plan_kernel, objects.*, system.*, processors.
    self_ref: int
    space: AddressSpace
    pool: VaAllocator
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
        """NT's page tables (self-reference slot: fixed 0x1ED before 14393, random after), pool and PFN database."""
        taken = {0x1EF, 0x1F0, 0x1F1, 0x1F5}  # KUSER_SHARED_DATA, kernel/drivers, Win7 drivers, Win7 pool
        if self.spec.build >= 14393:
            self.self_ref = self._pml4_slot(taken)
        else:
            self.self_ref = 0x1ED
            taken.add(0x1ED)
        self.space = AddressSpace(self.mem, self.alloc, self.self_ref, self_ref_nx=self.spec.build >= 9600)
        if self.spec.build >= 14393:
            pool_base = canonical(self._pml4_slot(taken) << 39) + self.rng.randrange(0x100, 0x7000000) * PAGE
            self.pfn_database = canonical(self._pml4_slot(taken) << 39)
        else:
            pool_base = 0xFFFFFA8000000000 + self.rng.randrange(0x100, 0x100000) * PAGE
            self.pfn_database = 0xFFFFFA8000000000
            pool_base += 0x10000000000  # keep clear of the PFN database
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
