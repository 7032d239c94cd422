"""The conversion pipeline: memory source -> find Windows -> plan -> write a DMP (full, bitmap or kernel).

    open_source (memory/) -> locate_windows (windows/) -> plan_dump (dmp/plan.py) -> write_dump (dmp/writer.py)

This module validates the request, runs the stages in that one direction, times them, gathers the
warnings for the user and returns a frozen ConversionResult. It decides nothing about the dump.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wincrash.dmp.plan import DumpPlan, plan_dump
from wincrash.dmp.verify import verify_written
from wincrash.dmp.writer import FORMATS, WriteResult, bytes_needed, write_dump
from wincrash.errors import WincrashError
from wincrash.formats.dump import DUMP_HEADER64_SIZE, PAGE_SIZE
from wincrash.memory.missing import describe_missing
from wincrash.memory.qemu_elf import cpu_mode
from wincrash.memory.source import PhysicalSource, open_source
from wincrash.output import atomic_output, check_destination, check_free_space
from wincrash.progress import byte_progress
from wincrash.windows.facts import WindowsFacts
from wincrash.windows.locate import locate_windows
from wincrash.windows.profiles import check_profile

__all__ = ["FORMATS", "ConversionResult", "convert_file", "default_output"]


@dataclass(frozen=True)
class ConversionResult:
    """What convert did, for the text summary and --json.

    ``seconds_*`` are wall-clock seconds; ``file_size`` bytes; ``pages_*`` 4 KiB pages (in Windows'
    runs, held by the file, and pages of the runs a kernel dump left out); ``full_size`` bytes a full
    dump of the same runs takes, for comparison; ``bugcheck`` describes the
    header's stop code; ``warnings`` are in the order they arose (input, analysis, plan, writing).
    """

    input: str
    output: str
    format: str
    facts: WindowsFacts
    plan: DumpPlan
    seconds_finding_windows: float
    seconds_writing: float
    file_size: int
    pages_in_runs: int
    pages_written: int
    pages_left_out: int
    warnings: tuple[str, ...]
    full_size: int = 0

    @property
    def bugcheck(self) -> str:
        """The header's stop code with its name ("0x00000161 LIVE_SYSTEM_DUMP" for a live dump)."""
        return self.plan.bugcheck

    def to_dict(self) -> dict[str, Any]:
        """The --json view."""
        return {
            "input": self.input, "output": self.output, "format": self.format, "file_size": self.file_size,
            "pages_in_runs": self.pages_in_runs, "pages_written": self.pages_written,
            "pages_left_out": self.pages_left_out, "full_dump_size": self.full_size, "bugcheck": self.bugcheck,
            "seconds_finding_windows": round(self.seconds_finding_windows, 3),
            "seconds_writing": round(self.seconds_writing, 3),
            "windows": self.facts.to_dict(self.plan.register_sources), "warnings": list(self.warnings),
        }


def check_guest_mode(source: PhysicalSource) -> None:
    """Raise WincrashError naming the vCPU modes when no vCPU note is in long mode (32-bit or not booted)."""
    if source.cpus and all(cpu_mode(c) != "long" for c in source.cpus):
        modes = sorted({cpu_mode(c) for c in source.cpus})
        if "protected" in modes:
            raise WincrashError("32-bit guest (no vCPU in long mode): not supported yet")
        raise WincrashError(f"no vCPU was in long mode ({', '.join(modes)}): the guest had not booted Windows "
                            "x64 when the dump was taken")


def default_output(input_path: Path) -> Path:
    """vmdump -> vmdump.dmp, guest.elf -> guest.dmp, next to the input.

    Raises WincrashError when that name would be the input itself.
    """
    out = input_path.with_suffix(".dmp") if input_path.suffix.lower() in (".elf", ".raw", ".mem", ".core") \
        else input_path.with_name(input_path.name + ".dmp")
    if out == input_path:
        raise WincrashError(f"{input_path}: give the output file with -o (the default would overwrite the input)")
    return out


def input_warnings(source: PhysicalSource, facts: WindowsFacts) -> list[str]:
    """What the user should know about the input and the analysis, in this order: missing ranges,
    analysis warnings, the source's notes, absent vCPU notes."""
    warnings = [f"input is truncated: guest-physical 0x{start:x}-0x{end:x} is missing and is written as zeros"
                for start, end in source.missing or []]
    warnings += facts.warnings
    warnings += source.notes
    if not source.cpus:
        warnings.append(f"the input ({source.kind}) has no vCPU register notes: processor contexts come "
                        "from Windows' own saved state where it has one")
    return warnings


def convert_file(input_path: Path, output_path: Path, profile: str = "auto", fmt: str = "full",
                 force: bool = False, progress: bool = True) -> ConversionResult:
    """Convert one memory image into a WinDbg-loadable MEMORY.DMP at ``output_path`` (mode 0600, atomic).

    ``profile``: "auto" or a profile name the build found must fit (else an error unless ``force``);
    ``fmt``: "full", "bitmap" or "kernel" (writer.FORMATS); ``force`` also allows overwriting
    ``output_path``; ``progress`` shows a progress bar on stderr. Raises WincrashError for bad
    arguments, an input without a findable Windows x64 kernel, or too little free space.
    """
    if fmt not in FORMATS:
        raise WincrashError(f"unknown format {fmt!r}: use {', '.join(FORMATS)}")
    if profile != "auto":
        check_profile(profile, 0)  # an unknown name fails here, before any slow work
    check_destination(output_path, force, inputs=[input_path])  # never the input, whatever --force says
    source = open_source(input_path, output_path.parent)  # decoded scratch copies go next to the output
    with source.fh:
        t0 = time.monotonic()
        try:
            facts = locate_windows(source)
        except WincrashError as exc:
            check_guest_mode(source)
            if source.missing:  # a cut-off input explains a failed search before anything else
                raise WincrashError(f"the input is truncated: {describe_missing(source.missing)} is missing, and "
                                    f"what Windows needs was not found in the rest ({exc}): take or copy the dump "
                                    "again") from None
            raise
        seconds_finding = time.monotonic() - t0
        warnings: list[str] = []
        mismatch = check_profile(profile, facts.build)
        if mismatch:
            if not force:
                raise WincrashError(f"{mismatch} (use --profile auto, or --force to convert anyway)")
            warnings.append(mismatch)
        warnings += input_warnings(source, facts)
        plan = plan_dump(facts, source, fmt)
        warnings += plan.warnings
        t0 = time.monotonic()
        written = _write(source, plan, output_path, fmt, force, progress, input_path)
        seconds_writing = time.monotonic() - t0
    warnings += [f"a patch at physical 0x{pa:x} lies outside Windows' memory runs and is not in the dump"
                 for pa in written.patches_lost]
    return ConversionResult(
        str(input_path), str(output_path), fmt, facts, plan, seconds_finding_windows=seconds_finding,
        seconds_writing=seconds_writing, file_size=written.file_size, pages_in_runs=written.pages_in_runs,
        pages_written=written.pages_written, pages_left_out=written.pages_left_out, warnings=tuple(warnings),
        full_size=DUMP_HEADER64_SIZE + written.pages_in_runs * PAGE_SIZE)


def _write(source: PhysicalSource, plan: DumpPlan, output: Path, fmt: str, force: bool,
           progress: bool, input_path: Path) -> WriteResult:
    """Check free space, then write ``plan`` to a temporary name renamed to ``output`` when complete."""
    check_free_space(output, bytes_needed(source, plan, fmt))
    pages = plan.kernel_pages.kept if plan.kernel_pages is not None else sum(c for _, c in plan.header.runs)
    with atomic_output(output, force, inputs=[input_path]) as out:
        with byte_progress(f"writing {fmt} dump", pages * PAGE_SIZE, progress) as advance:
            written = write_dump(source, plan, fmt, out, advance)
        # Before the rename: a dump whose headers, runs and bitmap disagree never gets the final name.
        verify_written(out, fmt, plan.header.runs, plan.kernel_pages.kept if plan.kernel_pages is not None else None)
        return written
