"""Summaries and soundness checks of Microsoft crash dump files (DUMP_HEADER64 / DUMP_HEADER32).

Reads headers only (a few pages, plus the bitmap of a bitmap dump) through wincrash.dmp.reader,
so that `info` answers at once even for a 64 GiB dump. The checks are the ones dumpchk users rely
on, plus the mistakes peer converters are known to make (see ../shared/DESIGN.md §4).
"""

from __future__ import annotations

from typing import Any, BinaryIO

from wincrash.describe.bugcheck import bugcheck_section
from wincrash.describe.context import describe_context
from wincrash.describe.rdmp import describe_rdmp
from wincrash.describe.report import Report, duration_100ns, filetime_to_iso, hx
from wincrash.describe.triage import describe_triage
from wincrash.dmp.pagemap import bitmap_counts
from wincrash.dmp.reader import BITMAP_TYPES, RUN_TYPES, DmpFile, is_page_pattern, read_at, read_dmp
from wincrash.formats.dump import (
    BITMAP_FULL_SIGNATURE,
    DUMP_TYPE_NAMES,
    MACHINE_NAMES,
    MAX_RUNS32,
    MAX_RUNS64,
    PAGE_PATTERN_U32,
    PAGE_SIZE,
    RDMP_TYPES,
    DumpType,
)

__all__ = ["check_runs", "describe_dmp", "hx"]


def check_runs(number: int, pages: int, runs: tuple[tuple[int, int], ...], max_runs: int) -> list[str]:
    """Problems in a run list: too many runs, overlap or disorder, a page count that disagrees."""
    problems = []
    if number > max_runs:
        problems.append(f"NumberOfRuns is {number}, more than the {max_runs} the header can hold")
    if number == 0:
        problems.append("the physical memory block has no runs")
    total = sum(count for _, count in runs)
    if number <= max_runs and total != pages:
        problems.append(f"NumberOfPages is {pages} but the runs add up to {total} pages")
    end = -1
    for base, count in runs:
        if base < end:
            problems.append(f"run at page {hx(base)} overlaps or is out of order")
            break
        end = base + count
    return problems


def describe_dmp(fh: BinaryIO, path: str, size: int) -> Report:
    """Summarise and check a crash dump file (the signature was already recognised).

    Raises WincrashError when the file is shorter than its header; everything else wrong is a
    problem in the Report.
    """
    dmp = read_dmp(fh, size)
    header = dmp.header
    dump_type = dmp.dump_type
    type_name = DUMP_TYPE_NAMES.get(dump_type)
    bits = "64" if dmp.is64 else "32"
    report = Report(path=path, size=size, kind=f"dmp{bits}",
                    title=f"Windows {bits}-bit kernel crash dump, {type_name or f'unknown dump type {dump_type}'}")
    machine = MACHINE_NAMES.get(header.MachineImageType)
    report.sections["header"] = {
        "signature": (header.Signature + header.ValidDump).decode("ascii"),
        "dump_type": dump_type,
        "dump_type_name": type_name or "unknown",
        "machine": machine or f"unknown (0x{header.MachineImageType:x})",
        "major_version": header.MajorVersion,
        "build": header.MinorVersion,
        "processors": header.NumberProcessors,
        "directory_table_base": hx(header.DirectoryTableBase),
        "pfn_database": hx(header.PfnDataBase),
        "ps_loaded_module_list": hx(header.PsLoadedModuleList),
        "ps_active_process_head": hx(header.PsActiveProcessHead),
        "kd_debugger_data_block": hx(header.KdDebuggerDataBlock),
        "system_time": filetime_to_iso(header.SystemTime),
        "system_uptime": None if is_page_pattern(header.SystemUpTime) else duration_100ns(header.SystemUpTime),
        "product_type": header.ProductType,
        "suite_mask": hx(header.SuiteMask),
        "required_dump_space": header.RequiredDumpSpace,
        "comment": header.Comment.split(b"\0", 1)[0].decode("latin-1") if header.Comment[:4] != b"PAGE" else None,
    }
    report.sections["bugcheck"] = bugcheck_section(header.BugCheckCode, header.BugCheckParameter)
    _check_header(dmp, type_name, machine, report)
    # Per-architecture CONTEXT (wincrash/describe/context.py).
    found = describe_context(header.ContextRecordBuffer, header.MachineImageType, dump_type in RUN_TYPES + RDMP_TYPES)
    report.sections["context"] = found.section
    report.problems.extend(found.problems)
    report.notes.extend(found.notes)

    extent = dmp.extent
    if dump_type in RUN_TYPES:
        _describe_runs(fh, dmp, report)
    elif dump_type == DumpType.TRIAGE and dmp.is64:
        describe_triage(fh, dmp.triage, report)
    elif dump_type in RDMP_TYPES and dmp.is64:  # DumpType 8-10 (wincrash/describe/rdmp.py)
        if dmp.runs is not None:
            _describe_runs(fh, dmp, report)
        rdmp = describe_rdmp(fh, dump_type, size, list(dmp.runs.runs) if dmp.runs is not None else None)
        report.sections["rdmp"] = rdmp.section
        report.problems.extend(rdmp.problems)
        report.notes.extend(rdmp.notes)
        if rdmp.extent is not None:
            extent = rdmp.extent
    if dump_type in RUN_TYPES and not is_page_pattern(header.RequiredDumpSpace):
        if size < header.RequiredDumpSpace:
            report.problems.append(f"the file is {size:,} bytes but RequiredDumpSpace says "
                                   f"{header.RequiredDumpSpace:,}: the dump is truncated")
    if extent is not None:
        if dmp.secondary_blobs:
            report.sections["secondary_data"] = {"blobs": dmp.secondary_blobs, "bytes": dmp.secondary_bytes}
        report.sections["header"]["extent"] = extent
        if extent > size:
            report.problems.append(f"the header describes {extent:,} bytes of dump but the file has {size:,}: "
                                   "truncated")
    return report


def _check_header(dmp: DmpFile, type_name: str | None, machine: str | None, report: Report) -> None:
    header, problems = dmp.header, report.problems
    if type_name is None:
        problems.append(f"unknown DumpType {dmp.dump_type}")
    if machine is None:
        problems.append(f"unknown MachineImageType 0x{header.MachineImageType:x}")
    width = 8 if dmp.is64 else 4
    for name in ("DirectoryTableBase", "PsLoadedModuleList", "PsActiveProcessHead", "KdDebuggerDataBlock",
                 "PfnDataBase"):
        if is_page_pattern(getattr(header, name), width):
            problems.append(f"{name} holds the 'PAGE' fill: it was never set")
    for name in ("BugCheckCode", "DumpType", "NumberProcessors", "MachineImageType"):
        if is_page_pattern(getattr(header, name), 4):
            problems.append(f"{name} holds the 'PAGE' fill: it was never set")
    if header.Exception.ExceptionCode == PAGE_PATTERN_U32:
        problems.append("the exception record holds the 'PAGE' fill (WinDbg shows 'Unknown exception - code 45474150')")
    if dmp.dump_type in RUN_TYPES and is_page_pattern(header.SystemTime):
        problems.append("SystemTime holds the 'PAGE' fill: it was never set")


def _describe_runs(fh: BinaryIO, dmp: DmpFile, report: Report) -> None:
    if dmp.runs is None:
        report.problems.append("the physical memory block holds the 'PAGE' fill: no memory runs")
        return
    number, pages, runs = dmp.runs.number, dmp.runs.pages, dmp.runs.runs
    report.sections["memory"] = {
        "number_of_runs": number,
        "number_of_pages": pages,
        "bytes": pages * PAGE_SIZE,
        "runs": [{"base_page": hx(b), "page_count": c, "start": hx(b * PAGE_SIZE), "end": hx((b + c) * PAGE_SIZE)}
                 for b, c in runs],
    }
    report.problems.extend(check_runs(number, pages, runs, MAX_RUNS64 if dmp.is64 else MAX_RUNS32))
    if dmp.dump_type == DumpType.FULL:
        offset = dmp.header_size
        for base, count in runs:
            end = offset + count * PAGE_SIZE
            if end > dmp.size:
                report.problems.append(f"run {hx(base * PAGE_SIZE)}-{hx((base + count) * PAGE_SIZE)} lies beyond "
                                       f"the end of the file (needs {end:,} bytes, file has {dmp.size:,})")
                break
            offset = end
    elif dmp.dump_type in BITMAP_TYPES and dmp.is64:
        _describe_bitmap(fh, dmp, report)
    elif dmp.dump_type == DumpType.KERNEL:
        report.sections["summary"] = {"signature": read_at(fh, dmp.header_size, 4).decode("latin-1")}


def _describe_bitmap(fh: BinaryIO, dmp: DmpFile, report: Report) -> None:
    summary = dmp.bitmap
    if summary is None:
        report.problems.append(dmp.bitmap_problem or "no bitmap summary header")
        return
    info: dict[str, Any] = {
        "signature": summary.signature.decode("ascii"),
        "scope": "full memory" if summary.signature == BITMAP_FULL_SIGNATURE else "kernel memory",
        "first_page_offset": hx(summary.first_page),
        "present_pages": summary.present_pages,
        "bitmap_pages": summary.pages,
    }
    report.sections["bitmap"] = info
    if summary.bitmap_end > dmp.size:
        report.problems.append(f"the bitmap ({summary.bitmap_bytes:,} bytes) runs past the end of the file")
        return
    if summary.first_page < summary.bitmap_end:
        report.problems.append(f"FirstPage {hx(summary.first_page)} lies inside the bitmap (ends at "
                               f"{hx(summary.bitmap_end)})")
    counted, in_runs = bitmap_counts(fh, dmp)
    run_pages = sum(c for _, c in dmp.runs.runs) if dmp.runs else 0
    info["pages_left_out"] = max(run_pages - in_runs, 0)
    if counted != summary.present_pages:
        report.problems.append(f"TotalPresentPages is {summary.present_pages:,} but the bitmap has "
                               f"{counted:,} bits set")
    if in_runs != counted:
        report.problems.append(f"{counted - in_runs:,} pages are present in the bitmap but outside the memory runs")
    report.notes.append(f"{info['pages_left_out']:,} of the {run_pages:,} pages in the memory runs are not in the "
                        "dump (WinDbg reads them as not present)")
