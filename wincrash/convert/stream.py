"""`wincrash capture` in one pass: MEMORY.DMP written from dump-guest-memory's stream, no ELF on disk.

    registers (HMP info registers) + memory through the monitor -> locate_windows -> the DMP's runs
    -> dump-guest-memory into a pipe -> each page at its final offset (dmp/stream_writer.py)
    -> Windows found again in the streamed bytes -> header and patches -> fsync, rename

Windows is found while the guest still runs (or sits crashed), before QEMU pauses it for the dump,
so the guest is paused exactly as long as a bare dump pauses it. Only the runs (Windows' own
MmPhysicalMemoryBlock, stable while it runs) come from that first look; everything in the DMP comes
from the stream, so it equals `dump` + `convert` of the same moment. New disk space: the DMP
(about the guest RAM; zero pages are holes) plus the few MiB of RAM outside Windows' runs until the end.
A kernel dump is staged the same way (complete bitmap layout) in an unnamed scratch file next to the
output, then cut from it: peak disk the staged data plus the kernel dump, the scratch gone at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from wincrash.convert.pipeline import ConversionResult, input_warnings
from wincrash.dmp.plan import DumpPlan, plan_dump
from wincrash.dmp.stream_writer import DmpStreamSink, StreamedDump, finish_kernel, finish_stream, stream_layout
from wincrash.dmp.verify import verify_written
from wincrash.dmp.writer import WriteResult, write_dump
from wincrash.errors import WincrashError
from wincrash.formats.qemu_registers import parse_info_registers
from wincrash.memory.fetched_source import FetchedSource
from wincrash.memory.scratch import scratch_file
from wincrash.memory.source import PhysicalSource
from wincrash.output import atomic_output, check_free_space, replacement
from wincrash.progress import byte_progress
from wincrash.vm.connection import VmConnection
from wincrash.vm.errors import VmError
from wincrash.vm.guest_memory import DumpResult
from wincrash.windows.locate import locate_windows

STREAM_SLACK = 64 << 20  # bytes beyond guest RAM: DMP headers and the RAM outside Windows' runs
FETCH_TIMEOUT = 60.0  # seconds for one monitor read
_MTREE_RAM = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio [-0-9]+, (?:ram|rom)\)", re.M)


class CannotStream(WincrashError):
    """This VM's dump cannot be streamed; the message says why in one line (capture falls back)."""


def ram_ranges(mtree: str, ram: int) -> list[tuple[int, int]]:
    """(guest-physical start, size) of RAM and ROM in the system address space of HMP ``info mtree -f``,
    merged; [(0, ram)] when the text has none."""
    flat = mtree.split("FlatView #")
    text = next((part for part in flat if 'AS "memory"' in part), mtree)
    ranges: list[tuple[int, int]] = []
    for lo, hi in sorted((int(a, 16), int(b, 16) + 1) for a, b in _MTREE_RAM.findall(text)):
        if ranges and ranges[-1][0] + ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi - ranges[-1][0])
        else:
            ranges.append((lo, hi - lo))
    return ranges or [(0, ram)]


async def find_runs(conn: VmConnection, fmt: str) -> tuple[tuple[int, int], ...]:
    """Windows' memory runs of ``fmt``'s DMP (the plan's header runs), found through the monitor.

    :raises CannotStream: no registers or memory through the monitor, or no Windows found that way.
    """
    try:
        cpus = parse_info_registers(await conn.registers_text())
        mtree = str(await conn.qmp("human-monitor-command", {"command-line": "info mtree -f"}))
        ram = await conn.memory_size()
    except VmError as exc:
        raise CannotStream(f"the monitor gives no registers or memory map ({exc})") from None
    loop = asyncio.get_running_loop()

    def fetch(paddr: int, size: int) -> bytes:
        return asyncio.run_coroutine_threadsafe(conn.read_physical(paddr, size), loop).result(FETCH_TIMEOUT)

    def analyse() -> tuple[tuple[int, int], ...]:
        source = FetchedSource(fetch, ram_ranges(mtree, ram), cpus)
        with source.fh:
            return tuple(plan_dump(locate_windows(source), source).header.runs)
    try:
        return await asyncio.to_thread(analyse)
    except (WincrashError, VmError) as exc:
        raise CannotStream(f"Windows was not found through the monitor ({exc})") from None


def _replacing(fh: BinaryIO, out: Path, fmt: str, advance: Callable[[int], None]
               ) -> Callable[[PhysicalSource, DumpPlan], WriteResult]:
    """rewrite(source, plan) for finish_stream: write the whole DMP to a new private file that takes the
    place of ``fh``, ``out``'s atomic output (output.replacement), which atomic_output then publishes."""

    def rewrite(source: PhysicalSource, plan: DumpPlan) -> WriteResult:
        with replacement(fh, out) as new:
            return write_dump(source, plan, fmt, new, advance)
    return rewrite


def _cut_kernel(sink: DmpStreamSink, out: Path, fh: BinaryIO) -> StreamedDump:
    """finish_kernel into ``fh`` (``out``'s atomic output), then verify_written, as convert does with a kernel
    plan (convert/pipeline.py _write). The kernel dump is a fraction of the RAM the free-space check before
    the stream counted; a disk that fills anyway fails the write (atomic_output: one line, nothing kept)."""
    done = finish_kernel(sink, out, fh, lambda _n: None)
    pages = done.plan.kernel_pages
    verify_written(fh, "kernel", done.plan.header.runs, pages.kept if pages is not None else None)
    return done


async def stream_capture(conn: VmConnection, out: Path, fmt: str, elf: Path | None, force: bool,
                         show_progress: bool, runs: tuple[tuple[int, int], ...]
                         ) -> tuple[DumpResult, ConversionResult]:
    """Stream ``conn``'s dump into ``out`` (a ``fmt`` DMP laid out by ``runs``), teeing it into ``elf`` when given.

    A kernel dump is staged as a complete bitmap DMP in an unnamed scratch file next to ``out`` (gone when
    the process ends, however it ends) and cut from it (finish_kernel) once the stream has ended.

    :raises WincrashError: every error of the dump (VmError), of writing (a full disk), of finding Windows
        in the streamed memory; nothing is left behind and the guest resumes.
    """
    ram = await conn.memory_size()
    check_free_space(out, ram + STREAM_SLACK + (ram if elf else 0))
    before = await conn.status()
    layout = stream_layout(runs, fmt)
    started = time.monotonic()
    with atomic_output(out, force) as fh, contextlib.ExitStack() as stack:
        tee = stack.enter_context(atomic_output(elf, force)) if elf else None
        staging = stack.enter_context(scratch_file(out.parent, 0)) if fmt == "kernel" else fh
        sink = DmpStreamSink(staging, layout, tee, writeback=fmt != "kernel")
        with byte_progress("dump -> DMP (guest paused)", ram, show_progress) as advance:
            last = 0

            def progress(done: int, _total: int) -> None:
                nonlocal last
                advance(done - last)
                last = done
            size, paused = await conn.stream_dump(sink, progress)
        seconds = time.monotonic() - started
        t0 = time.monotonic()
        if fmt == "kernel":
            done = await asyncio.to_thread(_cut_kernel, sink, out, fh)
        else:
            rewrite = _replacing(fh, out, fmt, lambda _n: None)
            done = await asyncio.to_thread(finish_stream, sink, out, fmt, rewrite, lambda _n: None)
        seconds_writing = time.monotonic() - t0
    after = await conn.status()
    dumped = DumpResult(path=out, format="elf (streamed)", size=size, guest_ram=ram, seconds=seconds,
                        paused_seconds=paused, status_before=before.state, status_after=after.state)
    written = done.written
    warnings = input_warnings(done.source, done.facts) + list(done.plan.warnings)
    if done.rewritten:
        warnings.append("Windows' memory runs changed during the dump: the DMP was rewritten once more")
    warnings += [f"a patch at physical 0x{pa:x} lies outside Windows' memory runs and is not in the dump"
                 for pa in written.patches_lost]
    conversion = ConversionResult(
        conn.target.describe(), str(out), fmt, done.facts, done.plan, seconds_finding_windows=seconds_writing,
        seconds_writing=seconds_writing, file_size=written.file_size, pages_in_runs=written.pages_in_runs,
        pages_written=written.pages_written, pages_left_out=written.pages_left_out, warnings=tuple(warnings))
    return dumped, conversion


__all__ = ["CannotStream", "find_runs", "ram_ranges", "stream_capture"]
