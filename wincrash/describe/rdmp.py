"""Summary and checks of DumpType 8, 9 and 10 dumps (kernel, kernel and user, complete memory
dumps in the 'RDMP' layout that current WinDbg `.dump /k`, `/ka`, `/f` writes).

The layout is kdmp-parser's (wincrash.formats.dump RDMP_*): an 'RDMP' summary right after the
64-bit header, then physical page ranges, then the ranges' pages back to back from
FirstPageOffset. Reads the summary and the range list only (a few KiB), never the pages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from wincrash.formats.dump import (
    DUMP_HEADER64_SIZE,
    DUMP_TYPE_COMPLETE_MEMORY,
    DUMP_TYPE_KERNEL_AND_USER_MEMORY,
    PAGE_SIZE,
    RDMP_COMPLETE_SUMMARY,
    RDMP_HEADER_SIZE,
    RDMP_KERNEL_SUMMARY,
    RDMP_MARKER,
    RDMP_PFN_RANGE,
    RDMP_SIGNATURE,
    RDMP_SUMMARY_SIZE,
)

MAX_RANGES = 1 << 16  # far more than any machine's memory map; bounds the read on a corrupt size
RDMP_SCOPES = {8: "kernel memory", DUMP_TYPE_KERNEL_AND_USER_MEMORY: "kernel and user memory",
               DUMP_TYPE_COMPLETE_MEMORY: "complete memory"}


@dataclass(frozen=True)
class RdmpFindings:
    """``section``: the summary (None when there is no 'RDMP' summary); ``extent``: bytes the dump
    occupies according to it (None when unknown); ``problems`` and ``notes`` for the report."""

    section: dict[str, Any] | None
    extent: int | None
    problems: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())


def describe_rdmp(fh: BinaryIO, dump_type: int, size: int,
                  runs: list[tuple[int, int]] | None) -> RdmpFindings:
    """Read the 'RDMP' summary of a DumpType 8/9/10 dump; ``runs`` are the header's
    (BasePage, PageCount) memory runs, or None when the header holds none."""
    raw = os.pread(fh.fileno(), RDMP_SUMMARY_SIZE, DUMP_HEADER64_SIZE)
    if len(raw) < RDMP_SUMMARY_SIZE:
        return RdmpFindings(None, None, ("the 'RDMP' summary is missing (file ends at the dump header)",))
    complete = dump_type == DUMP_TYPE_COMPLETE_MEMORY
    summary = (RDMP_COMPLETE_SUMMARY if complete else RDMP_KERNEL_SUMMARY).parse(raw)
    head = summary.Header
    if head.Marker != RDMP_MARKER or head.Signature != RDMP_SIGNATURE or head.ValidDump != b"DUMP":
        return RdmpFindings(None, None, (
            f"DumpType {dump_type} needs an 'RDMP' summary at {DUMP_HEADER64_SIZE:#x} but the file has "
            f"{raw[:12].hex(' ')} there: readers (WinDbg, kdmp-parser) cannot find its pages",))
    problems = []
    if head.MetadataSize % RDMP_PFN_RANGE.sizeof():
        problems.append(f"RDMP MetadataSize {head.MetadataSize:#x} is not a whole number of page ranges")
    expected_first = DUMP_HEADER64_SIZE + RDMP_HEADER_SIZE + head.MetadataSize
    if head.FirstPageOffset != expected_first:
        problems.append(f"RDMP FirstPageOffset {head.FirstPageOffset:#x} is not after the metadata "
                        f"({expected_first:#x})")
    ranges = _read_ranges(fh, head.MetadataSize, summary.TotalNumberOfPages if complete else None)
    present = sum(count for _, count in ranges)
    info: dict[str, Any] = {
        "signature": "RDMP",
        "scope": RDMP_SCOPES[dump_type],
        "metadata_size": head.MetadataSize,
        "first_page_offset": f"0x{head.FirstPageOffset:x}",
        "ranges": len(ranges),
        "present_pages": present,
    }
    if complete:
        info["number_of_ranges"] = summary.NumberOfRanges
        info["total_number_of_pages"] = summary.TotalNumberOfPages
        if present != summary.TotalNumberOfPages:
            problems.append(f"TotalNumberOfPages is {summary.TotalNumberOfPages:,} but the page ranges hold "
                            f"{present:,} pages")
        if summary.NumberOfRanges != len(ranges):
            problems.append(f"NumberOfRanges is {summary.NumberOfRanges} but {len(ranges)} ranges are listed")
    info["page_ranges"] = [{"base_page": f"0x{b:x}", "page_count": c} for b, c in ranges]
    notes = []
    if runs is not None:
        outside = sum(_outside(base, count, runs) for base, count in ranges)
        if outside:
            problems.append(f"{outside:,} pages of the RDMP ranges lie outside the header's memory runs")
        run_pages = sum(c for _, c in runs)
        info["pages_left_out"] = max(run_pages - (present - outside), 0)
        notes.append(f"{info['pages_left_out']:,} of the {run_pages:,} pages in the memory runs are not in the "
                     "dump (WinDbg reads them as not present)")
    return RdmpFindings(info, head.FirstPageOffset + present * PAGE_SIZE, tuple(problems), tuple(notes))


def _read_ranges(fh: BinaryIO, metadata_size: int, total_pages: int | None) -> list[tuple[int, int]]:
    """The (BasePage, PageCount) list; ends, as kdmp-parser's walk does, at a zero base page, at the
    end of the metadata, or (complete dumps) once TotalNumberOfPages are listed."""
    # The metadata runs from summary + 0x20 to FirstPageOffset; its first 0x10 bytes are the summary's
    # tail (Unknown1/2, or NumberOfRanges and TotalNumberOfPages), the rest is the range list.
    count = min(max(metadata_size - (RDMP_SUMMARY_SIZE - RDMP_HEADER_SIZE), 0) // RDMP_PFN_RANGE.sizeof(),
                MAX_RANGES)
    raw = os.pread(fh.fileno(), count * RDMP_PFN_RANGE.sizeof(), DUMP_HEADER64_SIZE + RDMP_SUMMARY_SIZE)
    ranges: list[tuple[int, int]] = []
    listed = 0
    for i in range(len(raw) // RDMP_PFN_RANGE.sizeof()):
        if total_pages is not None and listed >= total_pages:
            break
        entry = RDMP_PFN_RANGE.parse(raw[i * 16:(i + 1) * 16])
        if entry.BasePage == 0:
            break
        ranges.append((entry.BasePage, entry.PageCount))
        listed += entry.PageCount
    return ranges


def _outside(base: int, count: int, runs: list[tuple[int, int]]) -> int:
    inside = sum(max(0, min(base + count, b + c) - max(base, b)) for b, c in runs)
    return count - inside
