"""`info` for triage (small memory) dumps, DumpType 4: loaded drivers and the embedded debugger data block.

Layouts: formats/triage.py, checked against ../shared/samples/real/triage_x64.dmp.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from construct import Container

from wincrash.describe.report import Report, hx
from wincrash.dmp.reader import read_at
from wincrash.formats.kdbg import KDBG_OWNER_TAG, KDDEBUGGER_DATA64
from wincrash.formats.triage import (
    DUMP_DRIVER_ENTRY64,
    DUMP_DRIVER_ENTRY64_SIZE,
    DUMP_STRING_HEAD,
    TRIAGE_DATA_BLOCK64,
    TRIAGE_VALID,
)


def describe_triage(fh: BinaryIO, triage: Container | None, report: Report) -> None:
    """Add the triage section (drivers, embedded KDBG) of a 64-bit triage dump to ``report``.

    ``triage`` is the TRIAGE_DUMP64 sub-header at 0x2000 (None when the file ends before it).
    Offsets in it are file offsets; each read is bounded (DriverCount <= 4096, strings <= 1024).
    """
    if triage is None:
        report.problems.append("the triage header is missing (file ends at the dump header)")
        return
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
