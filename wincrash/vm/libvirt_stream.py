"""dump-guest-memory of a libvirt domain streamed into our process (what `capture` writes MEMORY.DMP from).

libvirt's own memory-only core dump (virDomainCoreDumpWithFormat, VIR_DUMP_MEMORY_ONLY, raw = QEMU's
ELF with paging=false) is pointed at a named pipe (FIFO) in a private 0700 directory: libvirt opens it
for writing and hands QEMU the descriptor, a thread of ours reads it into the sink. The guest is
paused exactly as by a bare libvirt dump (libvirt stops the vCPUs for a memory-only dump's duration).

Why not hand QEMU a pipe with virDomainQemuMonitorCommandWithFiles + ``getfd`` + ``dump-guest-memory``
``fd:NAME``, as over our own QMP socket: libvirtd 9.0 segfaults (NULL dereference in its domain event
thread, measured here: dmesg "segfault at 50 ... in libvirt_driver_qemu.so") when a dump it did not
start ends and QEMU sends DUMP_COMPLETED; getfd alone is fine.

Ctrl-C or a failing sink: the job is aborted (virDomainAbortJob) and our end of the FIFO closed, so
QEMU's next write fails, the dump ends and libvirt resumes the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from typing import Any

from wincrash.errors import WincrashError
from wincrash.vm.errors import DumpFailedError
from wincrash.vm.guest_memory import ProgressFn, explain_dump_error
from wincrash.vm.qmp_memory_dump import PipeCopier, describe_error

ABORT_WAIT_SECONDS = 30  # how long a cancelled dump may take to stop


class _Job(threading.Thread):
    """A blocking call in a thread of its own; the thread drops the call (and the libvirt objects its arguments
    hold) when it ends, so nothing keeps the connection alive past the event loop."""

    def __init__(self, name: str, fn: Any, *args: Any) -> None:
        super().__init__(name=name, daemon=True)
        self.fn, self.args = fn, args
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        fn, args = self.fn, self.args
        self.fn = self.args = None  # type: ignore[assignment]
        try:
            self.result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - read by the async side
            self.error = exc.with_traceback(None)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait (polling; never blocks the loop) until the call returned; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True


async def stream_libvirt_dump(conn: Any, sink: Any, ram: int, progress: ProgressFn) -> tuple[int, float | None]:
    """Memory-only dump of ``conn``'s domain (a LibvirtConnection) into ``sink.write(bytes)`` (from a thread).

    Returns (stream bytes, seconds the vCPUs were paused: the dump's duration when the domain was running,
    else None). ``ram`` (bytes) is the progress total.

    :raises DumpFailedError: libvirt refused or failed the dump (its message, explained).
    :raises WincrashError: ``sink.write`` failed (a full disk): the dump was ended, the guest resumes.
    """
    lv = conn.libvirt
    before = await conn.status()
    scratch = tempfile.mkdtemp(prefix="wincrash-fifo-")  # 0700: only root (libvirtd) and we reach the FIFO
    fifo = os.path.join(scratch, "dump.elf")
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    job = _Job("wincrash-libvirt-dump", conn.dom.coreDumpWithFormat, fifo, lv.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW,
               lv.VIR_DUMP_MEMORY_ONLY)
    opening = _Job("wincrash-fifo-open", os.open, fifo, os.O_RDONLY | os.O_CLOEXEC)
    rfd = -1
    copier: PipeCopier | None = None
    try:
        while opening.is_alive() and job.is_alive():  # libvirt opens the FIFO for writing, or fails first
            await asyncio.sleep(0.02)
        if opening.is_alive():
            _raise_job_error(conn, job)
            raise DumpFailedError(f"{conn.target.describe()}: libvirt ended the dump without writing it")
        if opening.error is not None:
            raise opening.error
        rfd, opening.result = opening.result, None
        copier = PipeCopier(rfd, sink)
        thread = threading.Thread(target=copier.run, name="wincrash-dump-copy", daemon=True)
        thread.start()
        while thread.is_alive() or job.is_alive():
            progress(copier.copied, ram)
            if copier.error is not None:
                raise WincrashError(f"cannot write the dump: {describe_error(copier.error)}")
            await asyncio.sleep(0.1)
        if copier.error is not None:
            raise WincrashError(f"cannot write the dump: {describe_error(copier.error)}")
        _raise_job_error(conn, job)
        progress(copier.copied, ram)
        return copier.copied, (time.monotonic() - started) if before.running else None
    except BaseException:
        if copier is not None:
            copier.cancel.set()
        if job.is_alive():
            with contextlib.suppress(lv.libvirtError):  # the job may have ended on its own meanwhile
                conn.dom.abortJob()
        if rfd >= 0:
            os.close(rfd)  # QEMU's next write fails (EPIPE): the dump ends, libvirt resumes the guest
            rfd = -1
        else:
            _unblock(fifo)  # libvirt may still be opening the FIFO: let it, so that its writes fail
        with contextlib.suppress(BaseException):  # a second Ctrl-C must not replace the error being raised
            await job.wait(ABORT_WAIT_SECONDS)
        raise
    finally:
        if opening.is_alive():
            _unblock(fifo)
        opening.join(5)
        if isinstance(opening.result, int):  # opened but never taken
            os.close(opening.result)
        if rfd >= 0:
            os.close(rfd)
        shutil.rmtree(scratch, ignore_errors=True)


def _unblock(fifo: str) -> None:
    """End opens of ``fifo`` blocked waiting for the other side (ours for reading, libvirt's for writing): open
    both sides without blocking for a moment. A writer let through this way then fails with EPIPE."""
    fds = []
    for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):
        with contextlib.suppress(OSError):
            fds.append(os.open(fifo, flags | os.O_CLOEXEC))
    time.sleep(0.1)
    for fd in fds:
        os.close(fd)


def _raise_job_error(conn: Any, job: _Job) -> None:
    """DumpFailedError with libvirt's message (explained) when the finished dump ``job`` failed."""
    if isinstance(job.error, conn.libvirt.libvirtError):
        raise DumpFailedError(f"{conn.target.describe()}: the dump failed: "
                              f"{explain_dump_error('elf', job.error.get_error_message())}") from None
    if job.error is not None:
        raise job.error
