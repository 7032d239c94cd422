"""`wincrash capture`: the one-shot runbook command (pre-flight, [NMI + panic], dump, convert, info).

With --crash this yields a real bugcheck dump (0x80 after an NMI) even when Windows cannot write its
own (pagefile too small, storage stack hung): we take memory from outside while the guest sits in
KeBugCheckEx, and convert it ourselves. Without --crash it is a live dump of a running system.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wincrash.capture.guest_memory_dump import dump_with_progress
from wincrash.capture.nmi import GUEST_NEEDS_NMI
from wincrash.dmp.stream_writer import STREAM_FORMATS
from wincrash.errors import EXIT_INTERRUPTED, EXIT_PROBLEMS, WincrashError
from wincrash.output import check_destination, check_free_space
from wincrash.vm.connection import VmConnection
from wincrash.vm.guest_memory import DumpResult
from wincrash.vm.opener import open_vm
from wincrash.vm.panic import PanicInfo
from wincrash.vm.runstate import RunState

if TYPE_CHECKING:
    from wincrash.convert.pipeline import ConversionResult

ELF_AND_DMP_SLACK = 64 << 20  # bytes beyond the guest RAM (or twice it): headers, RAM outside Windows' runs


@dataclass(frozen=True)
class CaptureResult:
    """What `wincrash capture` produced: the VM (``Target.to_dict``), the panic it saw (None: live dump or
    already crashed), QEMU's dump, the kept ELF's path (None: removed), the conversion to MEMORY.DMP,
    whether the DMP was written from the dump stream, and if not why (one line)."""

    vm: dict[str, Any]
    panic: PanicInfo | None
    dump: DumpResult
    elf_kept: str | None
    conversion: ConversionResult
    streamed: bool = False
    not_streamed_because: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for --json results."""
        return {"vm": self.vm, "panic": self.panic.to_dict() if self.panic else None, "dump": self.dump.to_dict(),
                "elf": self.elf_kept, "conversion": self.conversion.to_dict(), "streamed": self.streamed,
                "not_streamed_because": self.not_streamed_because}


def _elf_path(out: Path, keep_elf: bool) -> Path:
    return out.with_suffix(".elf") if keep_elf else out.with_name(f".{out.name}.wincrash-elf-{os.getpid()}")


async def _crash(vm: VmConnection, wait: float) -> PanicInfo | None:
    status = await vm.status()
    if status.state is RunState.GUEST_PANICKED:
        return None  # already crashed (e.g. an earlier `wincrash nmi`): dump what is there
    await vm.require_running("inject an NMI")
    with vm.watch_panics():
        await vm.inject_nmi()
        panic = await vm.wait_panic(wait)
    if panic is None:
        raise WincrashError(
            f"{vm.target.describe()}: no panic reported within {wait:g} s after the NMI, so memory may "
            f"not hold a bugcheck: {GUEST_NEEDS_NMI}. Nothing was written; for a live dump run "
            "`wincrash capture` without --crash", exit_code=EXIT_PROBLEMS)
    return panic


@dataclass(frozen=True)
class _Captured:
    vm: dict[str, Any]
    panic: PanicInfo | None
    dump: DumpResult
    conversion: ConversionResult | None  # None: the ELF is on disk and still to be converted
    fallback: str | None  # why the dump was not streamed


async def _capture_memory(vm: str, connect: str | None, out: Path, elf: Path, fmt: str, crash: bool, keep_elf: bool,
                          wait: float, force: bool, show_progress: bool) -> _Captured:
    from wincrash.convert.stream import CannotStream, find_runs, stream_capture

    async with open_vm(vm, connect) as connection:
        ram = await connection.memory_size()
        check_destination(out, force)
        if keep_elf:
            check_destination(elf, force)
        reason = connection.stream_unsupported() if fmt in STREAM_FORMATS else f"a {fmt} dump is not streamed"
        check_free_space(out, (2 if reason or keep_elf else 1) * ram + ELF_AND_DMP_SLACK)
        panic = await _crash(connection, wait) if crash else None
        if reason is None:
            try:
                runs = await find_runs(connection, fmt)
            except CannotStream as exc:
                reason = str(exc)
            else:
                dumped, conversion = await stream_capture(connection, out, fmt, elf if keep_elf else None, force,
                                                          show_progress, runs)
                return _Captured(connection.target.to_dict(), panic, dumped, conversion, None)
        dumped = await dump_with_progress(connection, elf, "elf", force, show_progress)
        return _Captured(connection.target.to_dict(), panic, dumped, None, reason)


def run_capture(vm: str, connect: str | None = None, out: Path | None = None, crash: bool = False,
                keep_elf: bool = False, wait: float = 120, fmt: str = "full", force: bool = False,
                show_progress: bool | None = None) -> CaptureResult:
    """`wincrash capture VM`: [NMI and wait ``wait`` seconds for the panic,] ELF dump, convert to ``out``.

    ``out`` defaults to ./MEMORY.DMP; ``fmt`` is the DMP format (full, bitmap or kernel); the ELF goes next to
    ``out`` (``out`` with .elf when ``keep_elf``, else a hidden temporary name removed at the end).

    :raises WincrashError: ``wait`` not positive; no panic after the NMI (exit 1); Ctrl-C (exit 130);
        every ``VmError`` of opening, crashing and dumping the VM; every conversion error.
    """
    if wait <= 0:
        raise WincrashError("--wait takes a positive number of seconds")
    out = Path(out or "MEMORY.DMP").absolute()
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    from wincrash.convert.pipeline import convert_file

    elf = _elf_path(out, keep_elf)
    if elf == out:
        raise WincrashError(f"{out}: with --keep-elf the ELF would be written over the DMP (same name): "
                            "give the output a .dmp name")
    check_destination(out, force)  # before connecting, long before any NMI or pause
    if keep_elf:
        check_destination(elf, force)
    try:
        try:
            got = asyncio.run(_capture_memory(vm, connect, out, elf, fmt, crash, keep_elf, wait, force,
                                              show_progress))
            conversion = got.conversion
            if conversion is None:
                # Outside the event loop, so that Ctrl-C interrupts the conversion directly (atomic output).
                conversion = convert_file(elf, out, "auto", fmt, force, show_progress)
        finally:
            if not keep_elf:
                with contextlib.suppress(OSError):  # never written (the dump failed), or not ours to remove
                    elf.unlink()
        return CaptureResult(vm=got.vm, panic=got.panic, dump=got.dump, elf_kept=str(elf) if keep_elf else None,
                             conversion=conversion, streamed=got.fallback is None, not_streamed_because=got.fallback)
    except KeyboardInterrupt:
        raise WincrashError(f"capture cancelled (Ctrl-C): {out} was not written", exit_code=EXIT_INTERRUPTED
                            ) from None
