"""Which physical pages hold the kernel's memory: what a kernel memory dump (DumpType 5 'SDMP') keeps.

Windows' own "Kernel memory dump" holds the pages of the kernel's address space. Without symbols we
find them from the page tables: every paging-structure page reachable from the System process's DTB,
every page mapped in the kernel half (0xFFFF8000_00000000 and up, 2 MiB and 1 GiB pages included),
each process's top-level paging structure (EPROCESS list from PsActiveProcessHead, DirectoryTableBase
at KPROCESS+0x28) so that every address space can still be entered, and any extra pages the caller
names (the patched ones). Walks are cycle-safe (each table page is read once, whatever level points
at it: the self-map entry is met again as a table already seen) and bounded by the dump's runs (a
frame number outside them is neither read nor kept). From a kernel dump given as input, only the pages
it holds are kept (the ones it left out are unknown, not zeros).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from wincrash.memory.pagebits import count_set, runs_bitmap, set_range
from wincrash.memory.source import PhysicalSource
from wincrash.windows.facts import KPROCESS_DIRECTORY_TABLE_BASE, WindowsFacts
from wincrash.windows.offsets import BUILDS
from wincrash.windows.paging import LARGE, PFN_MASK, PRESENT, cr3_base

PAGE = 0x1000
MAX_PROCESSES = 1 << 16  # EPROCESS list entries followed at most
KERNEL_HALF_FIRST_PML4E = 256  # PML4 entries 256..511 map 0xFFFF8000_00000000 and up
PAGES_PER_LEVEL = {3: 1 << 18, 2: 1 << 9}  # 4 KiB pages in a large page mapped by a PDPTE (1 GiB) / PDE (2 MiB)


@dataclass(frozen=True)
class KernelPages:
    """The pages a kernel dump keeps: ``bitmap`` has bit ``pfn`` set for each (qword-rounded, ``bits`` bits,
    the dump's bitmap as written); counts are 4 KiB pages: ``kept`` in all, ``tables`` paging
    structures of the System DTB, ``process_tables`` processes' top-level tables found, ``processes``
    EPROCESS entries walked; ``in_runs`` the pages of the dump's runs (what a full dump holds)."""

    bitmap: bytes
    bits: int
    kept: int
    tables: int
    processes: int
    process_tables: int
    in_runs: int


def _walk(source: PhysicalSource, dtb: int, in_runs: bytearray, keep: bytearray) -> int:
    """Mark the paging structures reachable from ``dtb`` and the kernel half's mapped pages in ``keep``;
    return how many table pages were read. Frames outside ``in_runs`` are ignored."""
    limit = len(in_runs) * 8

    def usable(pfn: int) -> bool:
        return pfn < limit and bool(in_runs[pfn >> 3] >> (pfn & 7) & 1)

    seen: set[int] = set()
    stack = [(cr3_base(dtb) >> 12, 4, None)]  # (table pfn, level, kernel half? None: decided per PML4E)
    while stack:
        pfn, level, kernel = stack.pop()
        if pfn in seen or not usable(pfn):
            continue
        seen.add(pfn)
        set_range(keep, pfn, 1)
        entries = struct.unpack("<512Q", source.read(pfn * PAGE, PAGE).ljust(PAGE, b"\0"))
        for index, entry in enumerate(entries):
            if not entry & PRESENT:
                continue
            child = (entry & PFN_MASK) >> 12
            half = index >= KERNEL_HALF_FIRST_PML4E if level == 4 else kernel
            if level in PAGES_PER_LEVEL and entry & LARGE:
                if half:
                    base = child & ~(PAGES_PER_LEVEL[level] - 1)
                    set_range(keep, base, min(PAGES_PER_LEVEL[level], max(0, limit - base)))
            elif level == 1:
                if half and usable(child):
                    set_range(keep, child, 1)
            else:
                stack.append((child, level - 1, half))
    return len(seen)


def _held(source: PhysicalSource, in_runs: bytearray) -> bytearray:
    """``in_runs`` restricted to the pages ``source`` holds (its segments' file-backed pages)."""
    held = bytearray(len(in_runs))
    for pa, _, filesz in source.extents():
        set_range(held, pa // PAGE, (pa % PAGE + filesz + PAGE - 1) // PAGE)
    return bytearray((int.from_bytes(held, "little") & int.from_bytes(in_runs, "little")).to_bytes(len(held), "little"))


def _process_dtbs(facts: WindowsFacts) -> tuple[int, list[int]]:
    """(EPROCESS entries walked, their DirectoryTableBase values) from PsActiveProcessHead; cycle-safe."""
    known = BUILDS.get(facts.build)
    if known is None:
        return 0, []
    links = known.off("_EPROCESS.ActiveProcessLinks")
    space = facts.kernel.space
    head = facts.kdbg.ps_active_process_head
    seen = {head}
    dtbs = []
    entry = space.read_u64(head)
    while entry and entry not in seen and len(seen) <= MAX_PROCESSES:
        seen.add(entry)
        dtb = space.read_u64(entry - links + KPROCESS_DIRECTORY_TABLE_BASE)
        if dtb:
            dtbs.append(dtb)
        entry = space.read_u64(entry)
    return len(seen) - 1, dtbs


def select_kernel_pages(facts: WindowsFacts, source: PhysicalSource, runs: Sequence[tuple[int, int]],
                        extra_pfns: Iterable[int] = ()) -> KernelPages:
    """The pages of ``runs`` (first page, page count) a kernel dump keeps (see the module docstring).

    Reads page tables through ``source`` and the EPROCESS list through facts.kernel.space; never raises
    for unreadable memory (what cannot be read is not kept).
    """
    bits = max((b + c for b, c in runs), default=0)
    all_runs = in_runs = runs_bitmap(runs, bits)
    if source.dump_header is not None and source.dump_header.kernel_only:
        in_runs = _held(source, in_runs)  # a page a kernel dump left out is unknown: never kept as zeros
    keep = bytearray(len(in_runs))
    dtbs = {cr3_base(facts.system_dtb or facts.dtb), cr3_base(facts.dtb)}
    tables = sum(_walk(source, dtb, in_runs, keep) for dtb in sorted(dtbs))
    processes, process_dtbs = _process_dtbs(facts)
    process_tables = 0
    for dtb in process_dtbs:
        pfn = cr3_base(dtb) >> 12
        if pfn < bits and in_runs[pfn >> 3] >> (pfn & 7) & 1:
            set_range(keep, pfn, 1)
            process_tables += 1
    for pfn in extra_pfns:
        if pfn < bits and in_runs[pfn >> 3] >> (pfn & 7) & 1:
            set_range(keep, pfn, 1)
    # Large pages may reach past a run: keep only the runs' pages.
    kept = (int.from_bytes(keep, "little") & int.from_bytes(in_runs, "little")).to_bytes(len(keep), "little")
    return KernelPages(kept, bits, count_set(kept), tables, processes, process_tables, count_set(all_runs))
