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
from typing import Any

from wincrash.capture.backend import DumpResult, VmBackend, open_backend
from wincrash.capture.dumpcmd import dump_with_progress
from wincrash.capture.events import PanicInfo
from wincrash.capture.nmi import GUEST_NEEDS_NMI
from wincrash.errors import EXIT_INTERRUPTED, EXIT_PROBLEMS, WincrashError
from wincrash.output import check_destination, check_free_space


@dataclass
class CaptureResult:
    vm: dict[str, Any]
    panic: PanicInfo | None
    dump: DumpResult
    elf_kept: str | None
    conversion: Any  # wincrash.convert.pipeline.ConversionResult

    @property
    def warnings(self) -> list[str]:
        """The conversion's warnings (wincrash.render prints each on stderr)."""
        return list(self.conversion.warnings)

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "panic": self.panic.to_dict() if self.panic else None, "dump": self.dump.to_dict(),
                "elf": self.elf_kept, "conversion": self.conversion.to_dict()}


def _elf_path(out: Path, keep_elf: bool) -> Path:
    return out.with_suffix(".elf") if keep_elf else out.with_name(f".{out.name}.wincrash-elf-{os.getpid()}")


async def _crash_and_dump(backend: VmBackend, elf: Path, wait: float, force: bool, show_progress: bool
                          ) -> tuple[PanicInfo | None, DumpResult]:
    panic = None
    state = await backend.state()
    if state.status == "guest-panicked":
        pass  # already crashed (e.g. an earlier `wincrash nmi`): dump what is there
    else:
        await backend.require_running("inject an NMI")
        with backend.watch_panics():
            await backend.inject_nmi()
            panic = await backend.wait_panic(wait)
        if panic is None:
            raise WincrashError(
                f"{backend.target.describe()}: no panic reported within {wait:g} s after the NMI, so memory may "
                f"not hold a bugcheck: {GUEST_NEEDS_NMI}. Nothing was written; for a live dump run "
                "`wincrash capture` without --crash", exit_code=EXIT_PROBLEMS)
    return panic, await dump_with_progress(backend, elf, "elf", force, show_progress)


async def _capture_memory(vm: str, connect: str | None, out: Path, elf: Path, crash: bool, keep_elf: bool,
                          wait: float, force: bool, show_progress: bool
                          ) -> tuple[dict[str, Any], PanicInfo | None, DumpResult]:
    async with open_backend(vm, connect) as backend:
        ram = await backend.memory_size()
        check_destination(out, force)
        if keep_elf:
            check_destination(elf, force)
        check_free_space(out, 2 * ram + (2 << 20))  # the ELF and the DMP side by side
        if crash:
            panic, dumped = await _crash_and_dump(backend, elf, wait, force, show_progress)
        else:
            panic, dumped = None, await dump_with_progress(backend, elf, "elf", force, show_progress)
        return backend.target.to_dict(), panic, dumped


def run_capture(vm: str, connect: str | None = None, out: Path | None = None, crash: bool = False,
                keep_elf: bool = False, wait: float = 120, fmt: str = "full", force: bool = False,
                show_progress: bool | None = None) -> CaptureResult:
    if wait <= 0:
        raise WincrashError("--wait takes a positive number of seconds")
    out = Path(out or "MEMORY.DMP").absolute()
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    from wincrash.convert.pipeline import convert_file

    elf = _elf_path(out, keep_elf)
    try:
        try:
            vm_info, panic, dumped = asyncio.run(
                _capture_memory(vm, connect, out, elf, crash, keep_elf, wait, force, show_progress))
            # Outside the event loop, so that Ctrl-C interrupts the conversion directly (atomic output).
            conversion = convert_file(elf, out, "auto", fmt, force, show_progress)
        finally:
            if not keep_elf:
                with contextlib.suppress(OSError):
                    elf.unlink()
        return CaptureResult(vm=vm_info, panic=panic, dump=dumped, elf_kept=str(elf) if keep_elf else None,
                             conversion=conversion)
    except KeyboardInterrupt:
        raise WincrashError(f"capture cancelled (Ctrl-C): {out} was not written", exit_code=EXIT_INTERRUPTED
                            ) from None
