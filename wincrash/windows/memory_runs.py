"""Windows' own view of RAM (MmPhysicalMemoryBlock), checked against the input before anything trusts it.

PHYSICAL_MEMORY_DESCRIPTOR (ntoskrnl, every x64 build): NumberOfRuns u32, pad, NumberOfPages u64,
then (BasePage, PageCount) u64 pairs, sorted and disjoint in a sound kernel. The runs decide what a
dump holds and how large its bitmap is, so runs that overlap, are empty or reach far past the memory
the input describes (a damaged or mis-found structure) are replaced by the input's own RAM ranges,
with a warning, instead of producing a dump whose page index disagrees with its bitmap, an 8 KiB
dump of nothing, or terabytes of zeros.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from wincrash.memory.source import PhysicalSource
from wincrash.windows.kdbg import KdbgBlock
from wincrash.windows.paging import AddressSpace

MAX_MEMORY_RUNS_READ = 4096  # PHYSICAL_MEMORY_RUN entries read from MmPhysicalMemoryBlock at most
PHYSICAL_ADDRESS_LIMIT = 1 << 52  # input segments at or above this are not RAM (x64: 52-bit physical)
PAGE = 0x1000
# How far Windows' runs may reach past the highest address the input describes, in pages: firmware
# and device holes make QEMU's and Windows' views differ a little; 256 MiB, or 1/8 of the input's span
# for large guests (a savevm stream leaves zero pages at the top of RAM out of its page map).
RUNS_SLACK_PAGES = 1 << 16

Runs = tuple[tuple[int, int], ...]


def input_ranges(source: PhysicalSource) -> Runs:
    """The input's RAM as (first page, page count) runs below 2^52, address-contiguous segments merged."""
    out: list[list[int]] = []
    for seg in source.segments:
        if seg.paddr >= PHYSICAL_ADDRESS_LIMIT or seg.size < PAGE:
            continue
        base, count = seg.paddr // PAGE, seg.size // PAGE
        if out and out[-1][0] + out[-1][1] >= base:
            out[-1][1] = max(out[-1][1], base + count - out[-1][0])
        else:
            out.append([base, count])
    return tuple((b, c) for b, c in out)


def implausible(runs: Sequence[tuple[int, int]], source: PhysicalSource) -> str | None:
    """Why ``runs`` (first page, page count) cannot be Windows' RAM in ``source``; None when they can.

    Sound runs are non-empty, sorted, disjoint, and end at most
    RUNS_SLACK_PAGES (or 1/8) past the highest page the input describes.
    """
    if not runs:
        return "no runs"
    for (b1, c1), (b2, _c2) in zip(runs, runs[1:], strict=False):
        if b2 < b1 + c1:
            return f"run at page 0x{b2:x} {'overlaps' if b2 >= b1 else 'comes before'} the run at page 0x{b1:x}"
    top = max((b + c for b, c in input_ranges(source)), default=0)
    end = max(b + c for b, c in runs)
    if end > top + max(RUNS_SLACK_PAGES, top // 8):
        return (f"the runs reach page 0x{end:x} ({end * PAGE / 2**30:,.1f} GiB) but the input describes memory up "
                f"to page 0x{top:x} ({top * PAGE / 2**30:,.1f} GiB)")
    return None


def read_runs(source: PhysicalSource, space: AddressSpace, kdbg: KdbgBlock) -> tuple[Runs, str, tuple[str, ...]]:
    """(runs as (first page, page count), how found, warnings) from MmPhysicalMemoryBlock.

    When it is unreadable or implausible (see ``implausible``), the input's RAM ranges are used
    instead and a warning says why.
    """
    pointer = space.read_u64(kdbg.mm_physical_memory_block)
    head = space.read(pointer, 16) if pointer else None
    if head is None:
        return input_ranges(source), "input segments", ("MmPhysicalMemoryBlock is not readable: runs taken from "
                                                        "the input's RAM ranges",)
    count, _pad, pages = struct.unpack("<IIQ", head)
    raw = space.read(pointer + 16, 16 * min(count, MAX_MEMORY_RUNS_READ)) or b""
    runs = tuple(struct.unpack_from("<QQ", raw, 16 * i) for i in range(len(raw) // 16))
    runs = tuple((b, c) for b, c in runs if c)  # an empty run says nothing
    reason = implausible(runs, source)
    if reason is not None:
        return input_ranges(source), "input segments", (
            f"MmPhysicalMemoryBlock at 0x{pointer:x} is implausible ({reason}): runs taken from the input's RAM "
            "ranges",)
    warnings = ()
    if sum(c for _, c in runs) != pages:
        warnings = (f"MmPhysicalMemoryBlock: NumberOfPages {pages} differs from the sum of its runs",)
    return runs, "MmPhysicalMemoryBlock (Windows' own view of RAM)", warnings
