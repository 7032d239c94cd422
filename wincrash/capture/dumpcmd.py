"""`wincrash dump`: the synchronous entry point (default file name, progress bar, event loop)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

from wincrash.capture.backend import DUMP_FORMATS, DumpResult, VmBackend, open_backend
from wincrash.capture.target import parse_target
from wincrash.errors import EXIT_INTERRUPTED, WincrashError
from wincrash.progress import byte_progress

SUFFIX = {"elf": ".elf", "kdump-zlib": ".kdump", "win-dmp": ".dmp"}


def default_output(vm: str, connect: str | None, fmt: str) -> Path:
    """<vm-name>-<UTC time>.<ext> in the current directory: unique and says where it came from."""
    target = parse_target(vm, connect)
    base = target.domain or (target.path.stem if target.path else f"{target.host}-{target.port}")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base) or "vm"
    return Path(f"{base}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}{SUFFIX[fmt]}")


async def dump_with_progress(backend: VmBackend, out: Path, fmt: str, force: bool, show_progress: bool
                             ) -> DumpResult:
    """dump-guest-memory through ``backend`` with a progress bar fed from QEMU's own progress reports."""
    total = await backend.memory_size()
    with byte_progress(f"dump {fmt}", total, show_progress) as advance:
        last = 0

        def progress(done: int, _total: int) -> None:
            nonlocal last
            if done > last:
                advance(done - last)
                last = done

        return await backend.dump(out, fmt, force, progress)


async def dump_async(vm: str, connect: str | None, out: Path, fmt: str, force: bool, show_progress: bool
                     ) -> DumpResult:
    async with open_backend(vm, connect) as backend:
        return await dump_with_progress(backend, out, fmt, force, show_progress)


def run_dump(vm: str, connect: str | None = None, out: Path | None = None, fmt: str = "elf", force: bool = False,
             show_progress: bool | None = None) -> DumpResult:
    if fmt not in DUMP_FORMATS:
        raise WincrashError(f"unknown format {fmt!r}: choose one of {', '.join(DUMP_FORMATS)}")
    if out is None:
        out = default_output(vm, connect, fmt)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    try:
        return asyncio.run(dump_async(vm, connect, Path(out), fmt, force, show_progress))
    except KeyboardInterrupt:
        raise WincrashError(f"dump cancelled (Ctrl-C): {out} was not written; the guest resumes",
                            exit_code=EXIT_INTERRUPTED) from None
