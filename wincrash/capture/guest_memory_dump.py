"""`wincrash dump`: dump-guest-memory of a live (or crashed) VM into a file, with a progress bar.

The transport (QMP pipe, QEMU-written file, libvirt core dump) is ``wincrash.vm``'s; this module
picks the default file name, shows QEMU's progress, and runs the event loop.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

from wincrash.errors import EXIT_INTERRUPTED, WincrashError
from wincrash.output import check_destination
from wincrash.progress import byte_progress
from wincrash.vm.connection import VmConnection
from wincrash.vm.guest_memory import DUMP_FORMATS, DumpResult
from wincrash.vm.opener import open_vm
from wincrash.vm.target import parse_target

SUFFIX = {"elf": ".elf", "kdump-zlib": ".kdump", "win-dmp": ".dmp"}


def default_output(vm: str, connect: str | None, fmt: str) -> Path:
    """``<vm-name>-<UTC time>.<ext>`` in the current directory: unique and says where it came from.

    :raises VmError: ``vm`` is not a valid VM argument (see ``parse_target``).
    """
    target = parse_target(vm, connect)
    base = target.domain or (target.path.stem if target.path else f"{target.host}-{target.port}")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base) or "vm"
    return Path(f"{base}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}{SUFFIX[fmt]}")


async def dump_with_progress(vm: VmConnection, out: Path, fmt: str, force: bool, show_progress: bool
                             ) -> DumpResult:
    """``vm.dump_guest_memory`` with a progress bar (bytes, on stderr when ``show_progress``) fed by QEMU.

    Raises what ``VmConnection.dump_guest_memory`` raises.
    """
    total = await vm.memory_size()
    with byte_progress(f"dump {fmt}", total, show_progress) as advance:
        last = 0

        def progress(done: int, _total: int) -> None:
            nonlocal last
            if done > last:
                advance(done - last)
                last = done

        return await vm.dump_guest_memory(out, fmt, force, progress)


async def _dump(vm: str, connect: str | None, out: Path, fmt: str, force: bool, show_progress: bool) -> DumpResult:
    async with open_vm(vm, connect) as connection:
        return await dump_with_progress(connection, out, fmt, force, show_progress)


def run_dump(vm: str, connect: str | None = None, out: Path | None = None, fmt: str = "elf", force: bool = False,
             show_progress: bool | None = None) -> DumpResult:
    """`wincrash dump VM`: write ``out`` (default: ``default_output``) in format ``fmt`` (``DUMP_FORMATS``).

    ``show_progress`` defaults to "stderr is a terminal".

    :raises WincrashError: an unknown format, Ctrl-C (exit 130, nothing written, the guest resumes), and
        every ``VmError`` of opening the VM and dumping it.
    """
    if fmt not in DUMP_FORMATS:
        raise WincrashError(f"unknown format {fmt!r}: choose one of {', '.join(DUMP_FORMATS)}")
    if out is None:
        out = default_output(vm, connect, fmt)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    check_destination(Path(out).absolute(), force)  # before connecting (QEMU pauses the guest for the dump)
    try:
        return asyncio.run(_dump(vm, connect, Path(out), fmt, force, show_progress))
    except KeyboardInterrupt:
        raise WincrashError(f"dump cancelled (Ctrl-C): {out} was not written; the guest resumes",
                            exit_code=EXIT_INTERRUPTED) from None
