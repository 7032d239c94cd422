"""``VmConnection``: the operations capture and doctor need from one VM, whatever reaches it.

Two implementations: ``qmp_connection.QmpConnection`` (our own QMP socket, UNIX or TCP, through
qemu.qmp) and ``libvirt_connection.LibvirtConnection`` (libvirt owns the domain's monitor, so we go
through its API). ``opener.open_vm`` picks one. Everything is async because qemu.qmp is; the libvirt
side runs its blocking calls in threads where they can take long.

The dump pre-flight (run state, format, destination, free space) is written once here; each
transport only writes the bytes (``_write_dump``).
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wincrash.output import check_destination, check_free_space
from wincrash.vm.errors import DumpFailedError, VmNotRunningError
from wincrash.vm.guest_memory import DumpResult, ProgressFn, guest_ram_size
from wincrash.vm.panic import PanicInfo
from wincrash.vm.runstate import DUMPABLE, RESUMABLE, VmStatus
from wincrash.vm.target import Target

DUMP_SLACK = 1 << 20  # bytes beyond guest RAM an uncompressed dump needs (ELF headers and notes)


class VmConnection(abc.ABC):
    """One open connection to one VM. Use through ``open_vm`` (which closes it), never across event loops.

    Every method may raise ``QemuGoneError`` when QEMU exits under us, and ``VmUnreachableError``
    when it stops answering; further errors are listed per method.
    """

    target: Target

    @abc.abstractmethod
    async def status(self) -> VmStatus:
        """The run state now (QMP ``query-status``; libvirt's domain state mapped onto QEMU's names)."""

    async def require_running(self, doing: str) -> VmStatus:
        """Return the status if the vCPUs run; ``doing`` ("inject an NMI") completes the refusal message.

        :raises VmNotRunningError: stopped, panicked or off (an NMI to a paused VM is never delivered).
        """
        status = await self.status()
        if not status.running:
            hint = " (resume it first: QMP 'cont' or 'virsh resume')" if status.state in RESUMABLE else ""
            raise VmNotRunningError(f"{self.target.describe()}: the VM is not running (status: {status.state}), "
                                    f"cannot {doing}{hint}", status.state)
        return status

    @abc.abstractmethod
    async def qmp(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one QMP command and return its ``return`` value (libvirt: through its monitor passthrough).

        :raises CommandRefusedError: QEMU answered with an error (e.g. CommandNotFound on an old QEMU).
        :raises NotQmpError: a libvirt domain whose driver cannot pass QMP (not QEMU, or no bindings).
        """

    @abc.abstractmethod
    async def inject_nmi(self) -> None:
        """Inject an NMI into every vCPU (QMP ``inject-nmi``, virDomainInjectNMI).

        :raises CommandRefusedError: refused (e.g. a machine without NMI support).
        """

    @abc.abstractmethod
    async def send_crash_keys(self) -> None:
        """Right Ctrl + Scroll Lock, twice, 0.2 s apart: Windows' keyboard crash (CrashOnCtrlScroll=1).

        :raises CommandRefusedError: refused (e.g. no keyboard).
        """

    @abc.abstractmethod
    def watch_panics(self) -> contextlib.AbstractContextManager[None]:
        """Start collecting panic reports now, before the action that causes them; ``wait_panic`` inside."""

    @abc.abstractmethod
    async def wait_panic(self, timeout: float) -> PanicInfo | None:
        """The first panic report within ``timeout`` seconds (inside ``watch_panics``); None if none came."""

    async def memory_size(self) -> int:
        """Bytes of guest RAM, what a dump covers (``query-memory-size-summary``: base + hot-plugged).

        :raises CommandRefusedError: a QEMU older than 2.11 (no such command).
        """
        return guest_ram_size(await self.qmp("query-memory-size-summary"))

    @abc.abstractmethod
    async def dump_formats(self) -> list[str]:
        """The dump-guest-memory formats this QEMU can write (``query-dump-guest-memory-capability``)."""

    async def dump_guest_memory(self, out: Path, fmt: str, force: bool, progress: ProgressFn) -> DumpResult:
        """Dump guest memory (dump-guest-memory, paging=false) into ``out``, 0600, complete or not at all.

        ``fmt`` is one of ``guest_memory.DUMP_FORMATS``; ``progress(done, total)`` is called in bytes
        as the dump advances. A running guest is paused by QEMU for the dump and resumes afterwards.

        :raises DumpFailedError: a run state QEMU cannot dump, a format this QEMU lacks, a dump already
            running, or QEMU reporting failure at the end.
        :raises WincrashError: ``out`` exists without ``force``, or its file system lacks room for the RAM.
        :raises QemuGoneError: QEMU exited during the dump (nothing is left behind).
        """
        where = self.target.describe()
        before = await self.status()
        if before.state not in DUMPABLE:
            raise DumpFailedError(f"{where}: cannot dump a VM in state '{before.state}'")
        formats = await self.dump_formats()
        if fmt not in formats:
            raise DumpFailedError(f"{where}: this QEMU cannot write format {fmt!r} (it offers: {', '.join(formats)})")
        ram = await self.memory_size()
        out = out.absolute()
        check_destination(out, force)
        check_free_space(out, ram + DUMP_SLACK)
        started = time.monotonic()
        size, paused = await self._write_dump(out, fmt, force, ram, before, progress)
        seconds = time.monotonic() - started
        after = await self.status()
        return DumpResult(path=out, format=fmt, size=size, guest_ram=ram, seconds=seconds, paused_seconds=paused,
                          status_before=before.state, status_after=after.state)

    @abc.abstractmethod
    async def _write_dump(self, out: Path, fmt: str, force: bool, ram: int, before: VmStatus,
                          progress: ProgressFn) -> tuple[int, float | None]:
        """Run the dump after the pre-flight; return (bytes written, seconds the vCPUs were paused or None)."""

    def stream_unsupported(self) -> str | None:
        """Why this connection cannot stream a dump into our process (None: it can, see ``stream_dump``)."""
        return "this connection cannot hand QEMU a pipe"

    async def stream_dump(self, sink: Any, progress: ProgressFn) -> tuple[int, float | None]:
        """dump-guest-memory (ELF, paging=false) into ``sink.write(bytes)`` (called from a thread); returns
        (stream bytes, seconds the vCPUs were paused or None). Only when ``stream_unsupported()`` is None.

        :raises DumpFailedError: as ``dump_guest_memory``; WincrashError when ``sink.write`` failed.
        """
        raise DumpFailedError(f"{self.target.describe()}: {self.stream_unsupported()}")

    async def registers_text(self) -> str:
        """Every vCPU's registers as HMP ``info registers -a`` prints them (formats/qemu_registers.py reads it).

        :raises CommandRefusedError: / NotQmpError: as ``qmp``.
        """
        return str(await self.qmp("human-monitor-command", {"command-line": "info registers -a"}))

    @abc.abstractmethod
    async def read_physical(self, paddr: int, size: int) -> bytes:
        """``size`` bytes of guest-physical memory at ``paddr``, read through the monitor while the VM runs
        (QMP ``pmemsave``, libvirt virDomainMemoryPeek with VIR_MEMORY_PHYSICAL).

        :raises CommandRefusedError: the monitor refused (address outside RAM, no file access).
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection; never raises."""
