"""Summaries and soundness checks of Microsoft crash dump files (DUMP_HEADER64 / DUMP_HEADER32).

Reads headers only (a few pages, plus the bitmap of a bitmap dump), so that `info` answers at
once even for a 64 GiB dump. The checks are the ones dumpchk users rely on, plus the mistakes
peer converters are known to make (see ../shared/DESIGN.md §4).
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

from construct import Container

from wincrash.errors import WincrashError
from wincrash.formats.dump import (
    BITMAP_FULL_SIGNATURE,
    BITMAP_KERNEL_SIGNATURE,
    BITMAP_SUMMARY_HEADER,
    BITMAP_SUMMARY_HEADER_SIZE,
    DUMP_HEADER32,
    DUMP_HEADER32_SIZE,
    DUMP_HEADER64,
    DUMP_HEADER64_SIZE,
    DUMP_SIGNATURE32,
    DUMP_SIGNATURE64,
    DUMP_TYPE_BITMAP,
    DUMP_TYPE_FULL,
    DUMP_TYPE_KERNEL,
    DUMP_TYPE_LIVE_KERNEL_BITMAP,
    DUMP_TYPE_NAMES,
    DUMP_TYPE_TRIAGE,
    MACHINE_NAMES,
    MAX_RUNS32,
    MAX_RUNS64,
    PAGE_PATTERN_U32,
    PAGE_PATTERN_U64,
    PAGE_SIZE,
    PHYSICAL_MEMORY_DESCRIPTOR32_HEAD,
    PHYSICAL_MEMORY_DESCRIPTOR64_HEAD,
    PHYSICAL_MEMORY_RUN32,
    PHYSICAL_MEMORY_RUN64,
    RDMP_TYPES,
)
from wincrash.formats.triage import (
    DUMP_DRIVER_ENTRY64,
    DUMP_DRIVER_ENTRY64_SIZE,
    DUMP_STRING_HEAD,
    TRIAGE_DATA_BLOCK64,
    TRIAGE_DUMP64,
    TRIAGE_VALID,
)
from wincrash.info.bugcheck import bugcheck_section
from wincrash.info.context import describe_context
from wincrash.info.rdmp import describe_rdmp
from wincrash.info.report import Report, duration_100ns, filetime_to_iso

BITMAP_TYPES = (DUMP_TYPE_BITMAP, DUMP_TYPE_LIVE_KERNEL_BITMAP)
RUN_TYPES = (DUMP_TYPE_FULL, DUMP_TYPE_KERNEL, DUMP_TYPE_BITMAP, DUMP_TYPE_LIVE_KERNEL_BITMAP)


def read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    """Read up to ``size`` bytes at ``offset`` without moving the file position."""
    return os.pread(fh.fileno(), size, offset)


def is_page_pattern(value: int, width: int = 8) -> bool:
    """True when a field still holds the 'PAGE' fill, i.e. it was never set."""
    return value == (PAGE_PATTERN_U64 if width == 8 else PAGE_PATTERN_U32)


def hx(value: int) -> str:
    """Addresses are shown and stored in JSON as 0x-prefixed hex, as WinDbg shows them."""
    return f"0x{value:x}"


# --------------------------------------------------------------------------- physical memory runs

def parse_runs(buffer: bytes, is64: bool) -> tuple[int, int, list[tuple[int, int]]] | None:
    """(NumberOfRuns, NumberOfPages, [(BasePage, PageCount)]) from a header's run buffer.

    None when the buffer holds the 'PAGE' fill (triage dumps have no runs). The run list is cut at
    the buffer's capacity; the caller reports a NumberOfRuns beyond it.
    """
    head_struct = PHYSICAL_MEMORY_DESCRIPTOR64_HEAD if is64 else PHYSICAL_MEMORY_DESCRIPTOR32_HEAD
    run_struct = PHYSICAL_MEMORY_RUN64 if is64 else PHYSICAL_MEMORY_RUN32
    head = head_struct.parse(buffer)
    if is_page_pattern(head.NumberOfRuns, 4):
        return None
    first = head_struct.sizeof()
    capacity = (len(buffer) - first) // run_struct.sizeof()
    runs = []
    for i in range(min(head.NumberOfRuns, capacity)):
        run = run_struct.parse(buffer[first + i * run_struct.sizeof():])
        runs.append((run.BasePage, run.PageCount))
    return head.NumberOfRuns, head.NumberOfPages, runs


def check_runs(number: int, pages: int, runs: list[tuple[int, int]], max_runs: int) -> list[str]:
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


# --------------------------------------------------------------------------- extent of a dump

def dump_extent(fh: BinaryIO) -> int:
    """How many bytes the dump at the start of ``fh`` occupies, according to its own header.

    Used to cut a crash dump out of pagefile.sys (Windows writes it at the start) and to detect
    truncation. Secondary data ('DumpBlob' blobs that drivers add after the dump proper) counts as
    part of the dump. Raises WincrashError when the header does not say.
    """
    primary = primary_extent(fh)
    return primary + secondary_data(fh, primary)[1]


def primary_extent(fh: BinaryIO) -> int:
    """Bytes of the dump proper (header and memory), without secondary data."""
    head = read_at(fh, 0, DUMP_HEADER64_SIZE)
    if head[:8] == DUMP_SIGNATURE64 and len(head) == DUMP_HEADER64_SIZE:
        header = DUMP_HEADER64.parse(head)
        return _extent(fh, header, True)
    if head[:8] == DUMP_SIGNATURE32 and len(head) >= DUMP_HEADER32_SIZE:
        header = DUMP_HEADER32.parse(head[:DUMP_HEADER32_SIZE])
        return _extent(fh, header, False)
    raise WincrashError("no complete crash dump header at the start of the file")


DUMP_BLOB_SIGNATURE = b"DumpBlob"
DUMP_BLOB_HEADER_SIZE = 0x20  # u32 HeaderSize, GUID Tag, u32 DataSize, u32 PrePad, u32 PostPad


def secondary_data(fh: BinaryIO, start: int) -> tuple[int, int]:
    """(number of blobs, bytes) of the secondary data that may follow a dump at ``start``.

    DUMP_BLOB_FILE_HEADER ('DumpBlob', u32 HeaderSize, u32 BuildNumber), then blobs, each a
    DUMP_BLOB_HEADER followed by PrePad + DataSize + PostPad bytes. The walk stops at the first
    header that is not one (in a pagefile, whatever Windows wrote after the dump).
    """
    if start >= os.fstat(fh.fileno()).st_size:
        return 0, 0
    head = read_at(fh, start, 16)
    if head[:8] != DUMP_BLOB_SIGNATURE:
        return 0, 0
    pos = start + max(16, int.from_bytes(head[8:12], "little"))
    blobs = 0
    while True:
        raw = read_at(fh, pos, DUMP_BLOB_HEADER_SIZE)
        if len(raw) < DUMP_BLOB_HEADER_SIZE or int.from_bytes(raw[:4], "little") != DUMP_BLOB_HEADER_SIZE:
            break
        size, pre, post = (int.from_bytes(raw[i:i + 4], "little") for i in (0x14, 0x18, 0x1C))
        end = pos + DUMP_BLOB_HEADER_SIZE + pre + size + post
        if len(read_at(fh, end - 1, 1)) != 1:
            break  # the blob runs past the end of the file
        blobs += 1
        pos = end
    return blobs, pos - start


def _extent(fh: BinaryIO, header: Container, is64: bool) -> int:
    header_size = DUMP_HEADER64_SIZE if is64 else DUMP_HEADER32_SIZE
    dump_type = header.DumpType
    if dump_type == DUMP_TYPE_FULL:
        parsed = parse_runs(header.PhysicalMemoryBlockBuffer, is64)
        if parsed is None:
            raise WincrashError("full dump without a physical memory block: size unknown")
        return header_size + sum(count for _, count in parsed[2]) * PAGE_SIZE
    if dump_type in BITMAP_TYPES and is64:
        summary = BITMAP_SUMMARY_HEADER.parse(read_at(fh, header_size, BITMAP_SUMMARY_HEADER_SIZE))
        return summary.FirstPage + summary.TotalPresentPages * PAGE_SIZE
    if dump_type == DUMP_TYPE_TRIAGE and is64:
        triage = TRIAGE_DUMP64.parse(read_at(fh, header_size, TRIAGE_DUMP64.sizeof()))
        return triage.SizeOfDump
    if dump_type in RDMP_TYPES and is64:  # DumpType 8-10 (wincrash/info/rdmp.py)
        rdmp = describe_rdmp(fh, dump_type, header_size, None)
        if rdmp.extent is not None:
            return rdmp.extent
    space = header.RequiredDumpSpace
    if header_size <= space < 1 << 48 and not is_page_pattern(space):
        return space
    raise WincrashError(f"dump type {dump_type}: the header does not say how large the dump is")


# --------------------------------------------------------------------------- the summary

def describe_dmp(fh: BinaryIO, path: str, size: int) -> Report:
    """Summarise and check a crash dump file (the signature was already recognised)."""
    magic = read_at(fh, 0, 8)
    is64 = magic == DUMP_SIGNATURE64
    header_size = DUMP_HEADER64_SIZE if is64 else DUMP_HEADER32_SIZE
    raw = read_at(fh, 0, header_size)
    if len(raw) < header_size:
        raise WincrashError(
            f"truncated crash dump: {len(raw)} bytes, a {'64' if is64 else '32'}-bit dump header needs {header_size}")
    header = (DUMP_HEADER64 if is64 else DUMP_HEADER32).parse(raw)
    dump_type = header.DumpType
    type_name = DUMP_TYPE_NAMES.get(dump_type)
    report = Report(path=path, size=size, kind="dmp64" if is64 else "dmp32",
                    title=f"Windows {'64' if is64 else '32'}-bit kernel crash dump, "
                          f"{type_name or f'unknown dump type {dump_type}'}")
    machine = MACHINE_NAMES.get(header.MachineImageType)
    report.sections["header"] = {
        "signature": magic.decode("ascii"),
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
    problems = report.problems
    if type_name is None:
        problems.append(f"unknown DumpType {dump_type}")
    if machine is None:
        problems.append(f"unknown MachineImageType 0x{header.MachineImageType:x}")
    width = 8 if is64 else 4
    for name in ("DirectoryTableBase", "PsLoadedModuleList", "PsActiveProcessHead", "KdDebuggerDataBlock",
                 "PfnDataBase"):
        if is_page_pattern(getattr(header, name), width):
            problems.append(f"{name} holds the 'PAGE' fill: it was never set")
    for name in ("BugCheckCode", "DumpType", "NumberProcessors", "MachineImageType"):
        if is_page_pattern(getattr(header, name), 4):
            problems.append(f"{name} holds the 'PAGE' fill: it was never set")
    if header.Exception.ExceptionCode == PAGE_PATTERN_U32:
        problems.append("the exception record holds the 'PAGE' fill (WinDbg shows 'Unknown exception - code 45474150')")
    if dump_type in RUN_TYPES and is_page_pattern(header.SystemTime):
        problems.append("SystemTime holds the 'PAGE' fill: it was never set")

    # Per-architecture CONTEXT (wincrash/info/context.py).
    found = describe_context(header.ContextRecordBuffer, header.MachineImageType,
                             dump_type in RUN_TYPES + RDMP_TYPES)
    report.sections["context"] = found.section
    problems.extend(found.problems)
    report.notes.extend(found.notes)

    extent = None
    if dump_type in RUN_TYPES:
        extent = _describe_runs(fh, header, is64, size, report)
    elif dump_type == DUMP_TYPE_TRIAGE and is64:
        extent = _describe_triage(fh, size, report)
    elif dump_type in RDMP_TYPES and is64:  # DumpType 8-10 (wincrash/info/rdmp.py)
        parsed = parse_runs(header.PhysicalMemoryBlockBuffer, True)
        if parsed is not None:
            _describe_runs(fh, header, is64, size, report)
        rdmp = describe_rdmp(fh, dump_type, size, parsed[2] if parsed else None)
        report.sections["rdmp"] = rdmp.section
        problems.extend(rdmp.problems)
        report.notes.extend(rdmp.notes)
        extent = rdmp.extent
    if dump_type in RUN_TYPES and not is_page_pattern(header.RequiredDumpSpace):
        if size < header.RequiredDumpSpace:
            problems.append(f"the file is {size:,} bytes but RequiredDumpSpace says {header.RequiredDumpSpace:,}: "
                            "the dump is truncated")
    if extent is not None:
        blobs, secondary = secondary_data(fh, extent)
        if blobs:
            report.sections["secondary_data"] = {"blobs": blobs, "bytes": secondary}
            extent += secondary
        report.sections["header"]["extent"] = extent
        if extent > size:
            problems.append(f"the header describes {extent:,} bytes of dump but the file has {size:,}: truncated")
    return report


def _describe_runs(fh: BinaryIO, header: Container, is64: bool, size: int, report: Report) -> int | None:
    parsed = parse_runs(header.PhysicalMemoryBlockBuffer, is64)
    if parsed is None:
        report.problems.append("the physical memory block holds the 'PAGE' fill: no memory runs")
        return None
    number, pages, runs = parsed
    report.sections["memory"] = {
        "number_of_runs": number,
        "number_of_pages": pages,
        "bytes": pages * PAGE_SIZE,
        "runs": [{"base_page": hx(b), "page_count": c, "start": hx(b * PAGE_SIZE), "end": hx((b + c) * PAGE_SIZE)}
                 for b, c in runs],
    }
    report.problems.extend(check_runs(number, pages, runs, MAX_RUNS64 if is64 else MAX_RUNS32))
    header_size = DUMP_HEADER64_SIZE if is64 else DUMP_HEADER32_SIZE
    if header.DumpType == DUMP_TYPE_FULL:
        offset = header_size
        for base, count in runs:
            end = offset + count * PAGE_SIZE
            if end > size:
                report.problems.append(f"run {hx(base * PAGE_SIZE)}-{hx((base + count) * PAGE_SIZE)} lies beyond "
                                       f"the end of the file (needs {end:,} bytes, file has {size:,})")
                break
            offset = end
        return offset if offset > header_size else header_size + sum(c for _, c in runs) * PAGE_SIZE
    if header.DumpType in BITMAP_TYPES and is64:
        return _describe_bitmap(fh, size, runs, report)
    if header.DumpType == DUMP_TYPE_KERNEL:
        signature = read_at(fh, header_size, 4)
        report.sections["summary"] = {"signature": signature.decode("latin-1")}
    return None


def _describe_bitmap(fh: BinaryIO, size: int, runs: list[tuple[int, int]], report: Report) -> int | None:
    raw = read_at(fh, DUMP_HEADER64_SIZE, BITMAP_SUMMARY_HEADER_SIZE)
    if len(raw) < BITMAP_SUMMARY_HEADER_SIZE:
        report.problems.append("the bitmap summary header is missing (file ends at the dump header)")
        return None
    signature = raw[:4]
    if signature not in (BITMAP_FULL_SIGNATURE, BITMAP_KERNEL_SIGNATURE) or raw[4:8] != b"DUMP":
        report.problems.append(f"bad bitmap summary signature {raw[:8]!r} (expected 'FDMP'/'SDMP' + 'DUMP')")
        return None
    summary = BITMAP_SUMMARY_HEADER.parse(raw)
    bitmap_bytes = (summary.Pages + 7) // 8
    bitmap_end = DUMP_HEADER64_SIZE + BITMAP_SUMMARY_HEADER_SIZE + bitmap_bytes
    info: dict[str, Any] = {
        "signature": signature.decode("ascii"),
        "scope": "full memory" if signature == BITMAP_FULL_SIGNATURE else "kernel memory",
        "first_page_offset": hx(summary.FirstPage),
        "present_pages": summary.TotalPresentPages,
        "bitmap_pages": summary.Pages,
    }
    report.sections["bitmap"] = info
    if bitmap_end > size or summary.Pages > 1 << 40:
        report.problems.append(f"the bitmap ({bitmap_bytes:,} bytes) runs past the end of the file")
        return summary.FirstPage + summary.TotalPresentPages * PAGE_SIZE
    if summary.FirstPage < bitmap_end:
        report.problems.append(f"FirstPage {hx(summary.FirstPage)} lies inside the bitmap (ends at {hx(bitmap_end)})")
    counted = 0
    in_runs = 0
    offset = DUMP_HEADER64_SIZE + BITMAP_SUMMARY_HEADER_SIZE
    chunk_bits = 8 * 1024 * 1024 * 8  # 8 MiB of bitmap at a time
    run_pages = sum(c for _, c in runs)
    for start_bit in range(0, summary.Pages, chunk_bits):
        nbits = min(chunk_bits, summary.Pages - start_bit)
        chunk = read_at(fh, offset + start_bit // 8, (nbits + 7) // 8)
        value = int.from_bytes(chunk, "little") & ((1 << nbits) - 1)
        counted += value.bit_count()
        for base, count in runs:  # pages present that Windows' runs do not describe are suspicious
            lo, hi = max(base, start_bit), min(base + count, start_bit + nbits)
            if lo < hi:
                in_runs += ((value >> (lo - start_bit)) & ((1 << (hi - lo)) - 1)).bit_count()
    info["pages_left_out"] = max(run_pages - in_runs, 0)
    if counted != summary.TotalPresentPages:
        report.problems.append(f"TotalPresentPages is {summary.TotalPresentPages:,} but the bitmap has "
                               f"{counted:,} bits set")
    if in_runs != counted:
        report.problems.append(f"{counted - in_runs:,} pages are present in the bitmap but outside the memory runs")
    report.notes.append(f"{info['pages_left_out']:,} of the {run_pages:,} pages in the memory runs are not in the "
                        "dump (WinDbg reads them as not present)")
    return summary.FirstPage + summary.TotalPresentPages * PAGE_SIZE


def _describe_triage(fh: BinaryIO, size: int, report: Report) -> int | None:
    raw = read_at(fh, DUMP_HEADER64_SIZE, TRIAGE_DUMP64.sizeof())
    if len(raw) < TRIAGE_DUMP64.sizeof():
        report.problems.append("the triage header is missing (file ends at the dump header)")
        return None
    triage = TRIAGE_DUMP64.parse(raw)
    info: dict[str, Any] = {
        "size_of_dump": triage.SizeOfDump,
        "valid_offset": hx(triage.ValidOffset),
        "driver_count": triage.DriverCount,
        "drivers": [],
    }
    report.sections["triage"] = info
    if read_at(fh, triage.ValidOffset, 4) != TRIAGE_VALID:
        report.problems.append(f"no 'TRGD' marker at ValidOffset {hx(triage.ValidOffset)}: the triage dump is "
                               "incomplete")
    if triage.DriverCount > 4096:
        report.problems.append(f"implausible DriverCount {triage.DriverCount}")
    else:
        drivers = []
        table = read_at(fh, triage.DriverListOffset, triage.DriverCount * DUMP_DRIVER_ENTRY64_SIZE)
        if len(table) < triage.DriverCount * DUMP_DRIVER_ENTRY64_SIZE:
            report.problems.append("the driver list runs past the end of the file")
        for i in range(len(table) // DUMP_DRIVER_ENTRY64_SIZE):
            entry = DUMP_DRIVER_ENTRY64.parse(table[i * DUMP_DRIVER_ENTRY64_SIZE:(i + 1) * DUMP_DRIVER_ENTRY64_SIZE])
            drivers.append((_dump_string(fh, entry.DriverNameOffset), entry.DllBase, entry.SizeOfImage))
        info["drivers"] = [{"name": n, "base": hx(b), "size": hx(z)} for n, b, z in drivers]
        # Which loaded driver each bugcheck parameter points into: often the first thing WinDbg says.
        params = [int(p, 16) for p in report.sections["bugcheck"]["parameters"]]
        report.sections["bugcheck"]["parameter_modules"] = [
            next((n.rsplit("\\", 1)[-1] for n, b, z in drivers if n and b <= p < b + z), None) for p in params]
    info["kdbg"] = _triage_kdbg(fh, triage, report)
    return triage.SizeOfDump


def _dump_string(fh: BinaryIO, offset: int) -> str | None:
    head = read_at(fh, offset, 4)
    if len(head) < 4:
        return None
    length = DUMP_STRING_HEAD.parse(head).Length
    if length > 1024:
        return None
    return read_at(fh, offset + 4, 2 * length).decode("utf-16-le", errors="replace")


def _triage_kdbg(fh: BinaryIO, triage: Container, report: Report) -> dict[str, Any] | None:
    """The plain KDDEBUGGER_DATA64 copy Windows embeds in triage dumps."""
    from wincrash.formats.kdbg import KDBG_OWNER_TAG, KDDEBUGGER_DATA64

    size = KDDEBUGGER_DATA64.sizeof()
    if not triage.DebuggerDataOffset or triage.DebuggerDataSize < 0x340:
        return None
    raw = read_at(fh, triage.DebuggerDataOffset, triage.DebuggerDataSize)
    if len(raw) < triage.DebuggerDataSize:
        report.problems.append("the embedded debugger data block runs past the end of the file")
        return None
    kdbg = KDDEBUGGER_DATA64.parse(raw[:size].ljust(size, b"\0"))
    if kdbg.Header.OwnerTag != int.from_bytes(KDBG_OWNER_TAG, "little"):
        report.problems.append("the embedded debugger data block has no 'KDBG' tag")
    fields = {
        "size": hx(kdbg.Header.Size), "kern_base": hx(kdbg.KernBase),
        "ps_loaded_module_list": hx(kdbg.PsLoadedModuleList), "ki_processor_block": hx(kdbg.KiProcessorBlock),
        "mm_physical_memory_block": hx(kdbg.MmPhysicalMemoryBlock), "mm_pfn_database": hx(kdbg.MmPfnDatabase),
        "size_prcb": hx(kdbg.SizePrcb), "offset_prcb_context": hx(kdbg.OffsetPrcbContext),
        "offset_prcb_proc_state_context": hx(kdbg.OffsetPrcbProcStateContext),
        "offset_prcb_number": hx(kdbg.OffsetPrcbNumber),
        "nt_build_lab": _triage_string(fh, triage, kdbg.NtBuildLab),
    }
    return fields


def _triage_string(fh: BinaryIO, triage: Container, address: int) -> str | None:
    """An ASCII string at a kernel address, if one of the triage data blocks holds it."""
    count = min(triage.DataBlocksCount, 1 << 16)
    raw = read_at(fh, triage.DataBlocksOffset, count * TRIAGE_DATA_BLOCK64.sizeof())
    for i in range(len(raw) // TRIAGE_DATA_BLOCK64.sizeof()):
        block = TRIAGE_DATA_BLOCK64.parse(raw[i * 16:])
        if block.Address <= address < block.Address + block.Size:
            data = read_at(fh, block.Offset + address - block.Address, min(256, block.Address + block.Size - address))
            return data.split(b"\0", 1)[0].decode("latin-1")
    return None
