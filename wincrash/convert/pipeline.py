"""The conversion pipeline: memory source -> find Windows -> patch -> write a DMP (full or bitmap).

Sources (memory/) -> analysis (windows/) -> writers (dmp/writer.py), in one direction. This module
only decides: which header values to use, which patches to apply, and what to tell the user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wincrash import __version__
from wincrash.dmp.context import context_from_note
from wincrash.dmp.header import HeaderFields
from wincrash.dmp.writer import (
    bitmap_layout,
    data_bytes_in_runs,
    write_bitmap,
    write_full,
)
from wincrash.errors import WincrashError
from wincrash.formats.context import CONTEXT_AMD64, CONTEXT_AMD64_SIZE, CONTEXT_AMD64_STRUCT
from wincrash.formats.dump import DUMP_HEADER64_SIZE, MAX_RUNS64, PAGE_SIZE
from wincrash.memory.qemu_elf import cpu_mode
from wincrash.memory.source import PhysicalSource, open_source
from wincrash.output import atomic_output, check_destination, check_free_space
from wincrash.progress import byte_progress
from wincrash.windows.bugcheck import LIVE_SYSTEM_DUMP, describe_bugcheck
from wincrash.windows.locate import WindowsFacts, locate_windows
from wincrash.windows.paging import AddressSpace
from wincrash.windows.profiles import check_profile

FORMATS = ("full", "bitmap")
KERNEL_SPACE = 0xFFFF800000000000


@dataclass
class ConversionResult:
    """What convert did, for the text summary and --json."""

    input: str
    output: str
    format: str
    facts: WindowsFacts
    seconds_finding_windows: float = 0.0
    seconds_writing: float = 0.0
    file_size: int = 0
    pages_in_runs: int = 0
    pages_written: int = 0
    pages_left_out: int = 0
    bugcheck: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input, "output": self.output, "format": self.format, "file_size": self.file_size,
            "pages_in_runs": self.pages_in_runs, "pages_written": self.pages_written,
            "pages_left_out": self.pages_left_out, "bugcheck": self.bugcheck,
            "seconds_finding_windows": round(self.seconds_finding_windows, 3),
            "seconds_writing": round(self.seconds_writing, 3),
            "windows": self.facts.to_dict(), "warnings": self.warnings,
        }


def merge_runs(runs: list[tuple[int, int]], limit: int = MAX_RUNS64) -> list[tuple[int, int]]:
    """At most ``limit`` runs, by closing the smallest gaps (their pages are then written as zeros)."""
    runs = sorted(runs)
    while len(runs) > limit:
        gaps = [(runs[i + 1][0] - (runs[i][0] + runs[i][1]), i) for i in range(len(runs) - 1)]
        _, i = min(gaps)
        base = runs[i][0]
        runs[i:i + 2] = [(base, runs[i + 1][0] + runs[i + 1][1] - base)]
    return runs


def va_patch(space: AddressSpace, va: int, data: bytes) -> list[tuple[int, bytes]] | None:
    """Physical patches that write ``data`` at virtual ``va`` (page by page); None if a page is unmapped."""
    patches = []
    pos = 0
    while pos < len(data):
        pa = space.translate(va + pos)
        if pa is None:
            return None
        n = min(len(data) - pos, PAGE_SIZE - ((va + pos) % PAGE_SIZE))
        patches.append((pa, data[pos:pos + n]))
        pos += n
    return patches


def saved_context(space: AddressSpace, va: int | None) -> bytes | None:
    """The CONTEXT Windows saved in KPRCB.ProcessorState, when it looks like a kernel context."""
    if not va:
        return None
    raw = space.read(va, CONTEXT_AMD64_SIZE)
    if raw is None:
        return None
    ctx = CONTEXT_AMD64_STRUCT.parse(raw)
    if not ctx.ContextFlags & CONTEXT_AMD64 or ctx.SegCs != 0x10 or ctx.Rip < KERNEL_SPACE:
        return None
    return raw


def _check_guest_mode(source: PhysicalSource) -> None:
    if source.cpus and all(cpu_mode(c) != "long" for c in source.cpus):
        modes = sorted({cpu_mode(c) for c in source.cpus})
        if "protected" in modes:
            raise WincrashError("32-bit guest (no vCPU in long mode): not supported yet")
        raise WincrashError(f"no vCPU was in long mode ({', '.join(modes)}): the guest had not booted Windows "
                            "x64 when the dump was taken")


def default_output(input_path: Path) -> Path:
    """vmdump -> vmdump.dmp, guest.elf -> guest.dmp, next to the input."""
    out = input_path.with_suffix(".dmp") if input_path.suffix.lower() in (".elf", ".raw", ".mem", ".core") \
        else input_path.with_name(input_path.name + ".dmp")
    if out == input_path:
        raise WincrashError(f"{input_path}: give the output file with -o (the default would overwrite the input)")
    return out


def convert_file(input_path: Path, output_path: Path, profile: str = "auto", fmt: str = "full",
                 force: bool = False, progress: bool = True) -> ConversionResult:
    """Convert one memory image into a WinDbg-loadable MEMORY.DMP."""
    if fmt not in FORMATS:
        raise WincrashError(f"unknown format {fmt!r}: use full or bitmap")
    if profile != "auto":
        check_profile(profile, 0)  # an unknown name fails here, before any slow work
    check_destination(output_path, force)
    source = open_source(input_path, output_path.parent)  # h6-formats: scratch files go next to the output
    with source.fh:
        t0 = time.monotonic()
        try:
            facts = locate_windows(source)
        except WincrashError as exc:
            _check_guest_mode(source)
            if source.missing:  # h6-formats: a cut-off input explains a failed search before anything else
                from wincrash.memory.missing import describe_missing

                raise WincrashError(f"the input is truncated: {describe_missing(source.missing)} is missing, and "
                                    f"what Windows needs was not found in the rest ({exc}): take or copy the dump "
                                    "again") from None
            raise
        result = ConversionResult(str(input_path), str(output_path), fmt, facts,
                                  seconds_finding_windows=time.monotonic() - t0)
        mismatch = check_profile(profile, facts.build)
        if mismatch:
            if not force:
                raise WincrashError(f"{mismatch} (use --profile auto, or --force to convert anyway)")
            result.warnings.append(mismatch)
        for start, end in source.missing or []:
            result.warnings.append(f"input is truncated: guest-physical 0x{start:x}-0x{end:x} is missing and is "
                                   "written as zeros")
        result.warnings.extend(facts.warnings)
        result.warnings.extend(source.notes)
        if not source.cpus:
            result.warnings.append(f"the input ({source.kind}) has no vCPU register notes: processor contexts come "
                                   "from Windows' own saved state where it has one")
        header, patches = _plan(source, facts, result)
        _write(source, header, patches, output_path, fmt, force, progress, result)
    return result


def _plan(source: PhysicalSource, facts: WindowsFacts, result: ConversionResult) -> tuple[HeaderFields,
                                                                                          list[tuple[int, bytes]]]:
    """Header values and memory patches, all taken from memory."""
    space = AddressSpace(source.read, facts.dtb)
    k = facts.kdbg_fields
    assert k is not None and facts.kdbg is not None
    patches: list[tuple[int, bytes]] = []
    if facts.kdbg.encoded:
        kdbg_patch = va_patch(space, facts.kdbg.va, facts.kdbg.plain)
        if kdbg_patch is None:
            raise WincrashError("the KDBG was decoded but its page is not mapped: cannot write it back")
        patches += kdbg_patch
    contexts: dict[int, bytes] = {}
    for cpu in facts.cpus:
        if cpu.note_index is not None:
            ctx = context_from_note(source.cpus[cpu.note_index])
        else:
            ctx = saved_context(space, cpu.proc_state_context_va)
            if ctx is None:
                continue
            cpu.register_source = "KPRCB.ProcessorState.ContextFrame (Windows' saved context)"
        contexts[cpu.number] = ctx
        if cpu.context_va:
            p = va_patch(space, cpu.context_va, ctx)
            if p is None:
                result.warnings.append(f"processor {cpu.number}: its CONTEXT buffer 0x{cpu.context_va:x} is not "
                                       "mapped; its registers are not written")
            else:
                patches += p
    if not contexts and source.cpus:
        contexts[0] = context_from_note(source.cpus[0])
    header_context = contexts.get(0) or next(iter(contexts.values()), bytes(CONTEXT_AMD64_SIZE))
    runs = facts.runs
    if len(runs) > MAX_RUNS64:
        result.warnings.append(f"Windows describes {len(runs)} memory runs; merged into {MAX_RUNS64} (the gaps "
                               "are written as zero pages)")
        runs = merge_runs(runs)
    code, params = (facts.bugcheck_code, facts.bugcheck_parameters) if facts.crashed else (LIVE_SYSTEM_DUMP,
                                                                                          (0, 0, 0, 0))
    result.bugcheck = describe_bugcheck(code)
    header = HeaderFields(
        build=facts.build, directory_table_base=facts.system_dtb or facts.dtb,
        pfn_database=k.MmPfnDatabase, ps_loaded_module_list=k.PsLoadedModuleList,
        ps_active_process_head=k.PsActiveProcessHead, kd_debugger_data_block=facts.kdbg.va,
        number_processors=len(facts.cpus) or max(len(source.cpus), 1), bugcheck_code=code,
        bugcheck_parameters=tuple(params),  # type: ignore[arg-type]
        runs=runs, context=header_context, system_time=facts.system_time, system_uptime=facts.interrupt_time,
        product_type=facts.product_type, suite_mask=facts.suite_mask,
        kd_secondary_version=facts.kd_secondary_version, major_version=facts.major_version,
        comment=f"wincrash {__version__}: {'live' if not facts.crashed else 'crash'} dump converted from "
                f"{source.kind} without symbols",
    )
    return header, patches


def _write(source: PhysicalSource, header: HeaderFields, patches: list[tuple[int, bytes]], output: Path, fmt: str,
           force: bool, progress: bool, result: ConversionResult) -> None:
    run_bytes = sum(c for _, c in header.runs) * PAGE_SIZE
    t0 = time.monotonic()
    # What the output will occupy at most: the input's data inside the runs (holes stay holes in a full
    # dump and are left out of a bitmap dump) plus the patched pages and the headers.
    needed = data_bytes_in_runs(source, header.runs) + len(patches) * PAGE_SIZE
    if fmt == "full":
        check_free_space(output, DUMP_HEADER64_SIZE + needed)
        with atomic_output(output, force) as out, byte_progress("writing full dump", run_bytes, progress) as adv:
            written = write_full(source, header, patches, out, adv)
    else:
        check_free_space(output, bitmap_layout(header.runs, 0)[1] + needed)
        with atomic_output(output, force) as out, \
                byte_progress("writing bitmap dump", run_bytes, progress) as adv:
            written = write_bitmap(source, header, patches, out, adv)
    result.seconds_writing = time.monotonic() - t0
    result.file_size, result.pages_in_runs = written.file_size, written.pages_in_runs
    result.pages_written, result.pages_left_out = written.pages_written, written.pages_left_out
    for pa in written.patches_lost:
        result.warnings.append(f"a patch at physical 0x{pa:x} lies outside Windows' memory runs and is not in the "
                               "dump")
