"""Saying which guest-physical memory an input lacks, and making overlapping segments disjoint.

Truncated inputs (an interrupted dump or copy) and paging dumps (`dump-guest-memory paging=true`,
whose PT_LOADs follow the guest's virtual mappings, so several may hold the same physical page)
both come down to segments: these helpers turn them into what PhysicalSource needs (sorted,
non-overlapping) and into one line for the engineer.
"""

from __future__ import annotations

from collections.abc import Iterable

from wincrash.memory.segments import Segment


def human_size(n: int) -> str:
    """1 GiB, 12 MiB, 4 KiB, 100 bytes: the largest unit that divides ``n`` into at least 1."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def describe_missing(ranges: Iterable[tuple[int, int]], limit: int = 3) -> str:
    """'0x1c0000000-0x200000000 (1 GiB)' for the largest ranges, and the total when there are more."""
    ranges = sorted(ranges, key=lambda r: r[0] - r[1])
    shown = ", ".join(f"0x{s:x}-0x{e:x} ({human_size(e - s)})" for s, e in sorted(ranges[:limit]))
    if len(ranges) > limit:
        total = sum(e - s for s, e in ranges)
        shown += f" and {len(ranges) - limit} more ranges ({human_size(total)} in all)"
    return shown


def disjoint(segments: Iterable[Segment]) -> tuple[list[Segment], int]:
    """(sorted non-overlapping segments, bytes of overlap dropped) from segments that may overlap.

    Where two segments hold the same guest-physical bytes the first (lowest start, then longest)
    is kept: QEMU's paging dumps store the same page once per virtual mapping, with equal bytes.
    """
    out: list[Segment] = []
    covered = 0
    dropped = 0
    for seg in sorted(segments, key=lambda s: (s.paddr, -s.size)):
        end = seg.paddr + seg.size
        if end <= covered:
            dropped += seg.size
            continue
        start = max(seg.paddr, covered)
        cut = start - seg.paddr
        dropped += cut
        out.append(Segment(start, end - start, seg.offset + cut, max(0, min(seg.filesz - cut, end - start))))
        covered = end
    return out, dropped


def paging_segments(segments: list[Segment]) -> tuple[list[Segment], str] | None:
    """(disjoint segments of the bytes present, a note) for a paging=true dump; None when nothing overlaps.

    QEMU's `dump-guest-memory paging=true` writes one PT_LOAD per virtual mapping of the guest's page
    tables, with p_paddr the physical address: several PT_LOADs name the same physical page, and a
    PT_LOAD's p_filesz may be smaller than its p_memsz (only that much is in the file). Only the bytes
    in the file count; what no PT_LOAD holds is absent (reads as zeros), which is the nature of a
    paging dump, not a truncation.
    """
    ordered = sorted(segments, key=lambda s: s.paddr)
    if all(a.paddr + a.size <= b.paddr for a, b in zip(ordered, ordered[1:], strict=False)):
        return None
    present, _dropped = disjoint(Segment(s.paddr, s.filesz, s.offset, s.filesz) for s in segments if s.filesz)
    held = sum(s.size for s in present)
    note = (f"dump-guest-memory with paging=true: only memory mapped by the guest's page tables is in the file "
            f"({human_size(held)} held); the rest is written as zeros (take the dump with paging=false for all of RAM)")
    return present, note
