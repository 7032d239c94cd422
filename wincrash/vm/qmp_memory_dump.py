"""dump-guest-memory over our own QMP socket, done carefully: progress, cancel, pause time.

Over a UNIX socket we hand QEMU the write end of a pipe (SCM_RIGHTS + getfd, protocol ``fd:``) and
write the file ourselves. That buys three things the ``file:`` protocol cannot give: the output
goes through atomic_output (0600, temp + rename, nothing left behind), it does not matter which
user QEMU runs as, and Ctrl-C really stops the dump (we close the pipe, QEMU's write fails, the
guest resumes) instead of leaving QEMU writing a file nobody wants while the guest stays paused.
Over TCP no descriptor can be passed, so QEMU writes the file itself (``file:`` protocol).
The pre-flight (state, format, destination, space) is ``VmConnection.dump_guest_memory``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener

from wincrash.errors import WincrashError
from wincrash.output import atomic_output
from wincrash.vm.errors import DumpFailedError, QemuGoneError
from wincrash.vm.guest_memory import ProgressFn, explain_dump_error
from wincrash.vm.qmp_session import QmpSession

DUMP_EVENTS = ("STOP", "RESUME", "DUMP_COMPLETED")
F_SETPIPE_SZ = 1031  # fcntl.h (Linux): grow the pipe so QEMU's writes block less
CHUNK = 1 << 20  # bytes per read from the pipe


@dataclass
class _Timeline:
    """STOP/RESUME/DUMP_COMPLETED as QEMU timestamped them (seconds since the epoch)."""

    stop: float | None = None
    resume: float | None = None
    completed: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)

    def record(self, msg: Any) -> None:
        ts = msg.get("timestamp", {})
        when = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
        name = msg["event"]
        self.events.append(name)
        if name == "STOP" and self.stop is None:
            self.stop = when
        elif name == "RESUME":
            self.resume = when
        elif name == "DUMP_COMPLETED":
            self.completed = dict(msg.get("data") or {})

    def paused_seconds(self) -> float | None:
        """How long the vCPUs were stopped (until now if QEMU has not resumed them); None if never stopped."""
        if self.stop is None:
            return None
        return (self.resume or time.time()) - self.stop


class PipeCopier:
    """A thread that copies the pipe into ``fh`` (a file, or any object with write()) until EOF or until
    cancelled; shared by the QMP dump and the libvirt stream (vm.libvirt_stream)."""

    def __init__(self, rfd: int, fh: Any) -> None:
        self.rfd, self.fh = rfd, fh
        self.copied = 0
        self.cancel = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self.rfd, select.POLLIN | select.POLLHUP)
            while not self.cancel.is_set():
                if not poller.poll(200):
                    continue
                data = os.read(self.rfd, CHUNK)
                if not data:
                    return
                self.fh.write(data)
                self.copied += len(data)
        except BaseException as exc:  # noqa: BLE001 - handed to the async side, which reports it
            self.error = exc


async def write_qmp_dump(qmp: QmpSession, out: Path, fmt: str, force: bool, ram: int, progress: ProgressFn
                         ) -> tuple[int, float | None]:
    """Start a detached dump-guest-memory and follow it to the end; ``ram`` (bytes) is the progress total.

    Returns (bytes written, seconds the vCPUs were paused or None when they were already stopped).

    :raises DumpFailedError: another dump is running, or QEMU reported failure (DUMP_COMPLETED error).
    :raises QemuGoneError: QEMU exited during the dump (nothing is left behind).
    :raises WincrashError: ``out`` cannot be written.
    """
    where = qmp.target.describe()
    current = await qmp.execute("query-dump")
    if current.get("status") == "active":
        raise DumpFailedError(f"{where}: another dump is already running in this QEMU")
    timeline = _Timeline()
    with qmp.listen(*DUMP_EVENTS) as listener:
        if qmp.target.kind == "unix":
            size = await _dump_via_pipe(qmp, listener, timeline, out, fmt, force, ram, progress)
        else:
            size = await _dump_via_file(qmp, listener, timeline, out, fmt, force, ram, progress)
    return size, timeline.paused_seconds()


def _qemu_exited(where: str, aftermath: str) -> QemuGoneError:
    return QemuGoneError(f"{where}: QEMU exited during the dump (killed or crashed); {aftermath}")


async def _start(qmp: QmpSession, protocol: str, fmt: str) -> None:
    await qmp.execute("dump-guest-memory", {"paging": False, "protocol": protocol, "detach": True, "format": fmt})


async def _drain_events(qmp: QmpSession, listener: EventListener, timeline: _Timeline, until_completed: bool,
                        timeout: float) -> None:
    """Collect dump events; with until_completed, wait (up to timeout) for DUMP_COMPLETED and RESUME."""
    deadline = time.monotonic() + timeout
    while True:
        wait = 0 if not until_completed else max(0.0, deadline - time.monotonic())
        done = timeline.completed is not None and (timeline.stop is None or timeline.resume is not None)
        if until_completed and done:
            return
        msg = await qmp.next_event(listener, wait if until_completed else 0.001)
        if msg is None:
            if until_completed and time.monotonic() < deadline:
                continue
            return
        timeline.record(msg)


def _check_completed(timeline: _Timeline, fmt: str, where: str) -> None:
    data = timeline.completed or {}
    if data.get("error") or (data.get("result") or {}).get("status") == "failed":
        raise DumpFailedError(f"{where}: the dump failed: "
                              f"{explain_dump_error(fmt, data.get('error', 'unknown error'))}")


async def _dump_via_pipe(qmp: QmpSession, listener: EventListener, timeline: _Timeline, out: Path, fmt: str,
                         force: bool, ram: int, progress: ProgressFn) -> int:
    with atomic_output(out, force) as fh:
        return await _pump(qmp, listener, timeline, fh, fmt, ram, progress, f"cannot write {out}")


async def stream_qmp_dump(qmp: QmpSession, sink: Any, ram: int, progress: ProgressFn) -> tuple[int, float | None]:
    """dump-guest-memory (ELF, paging=false) into ``sink.write(bytes)``, called from a thread as the pipe delivers.

    Returns (stream bytes, seconds the vCPUs were paused or None). Raises what write_qmp_dump raises;
    an exception from ``sink.write`` (a full disk) ends the dump (QEMU's write fails, the guest resumes)
    and is raised as WincrashError.
    """
    if qmp.target.kind != "unix":
        raise DumpFailedError(f"{qmp.target.describe()}: a dump can only be streamed over a UNIX socket")
    current = await qmp.execute("query-dump")
    if current.get("status") == "active":
        raise DumpFailedError(f"{qmp.target.describe()}: another dump is already running in this QEMU")
    timeline = _Timeline()
    with qmp.listen(*DUMP_EVENTS) as listener:
        size = await _pump(qmp, listener, timeline, sink, "elf", ram, progress, "cannot write the dump")
    return size, timeline.paused_seconds()


async def _pump(qmp: QmpSession, listener: EventListener, timeline: _Timeline, fh: Any, fmt: str, ram: int,
                progress: ProgressFn, failing: str) -> int:
    """Hand QEMU a pipe, start the dump into it, copy the pipe into ``fh.write`` until QEMU is done."""
    where = qmp.target.describe()
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # an older kernel or a lower pipe-max-size: the default size works too
        fcntl.fcntl(wfd, F_SETPIPE_SZ, CHUNK)
    fdname = f"wincrash-dump-{os.getpid()}"
    try:
        try:
            qmp.send_fd(wfd)
            await qmp.execute("getfd", {"fdname": fdname})
        finally:
            os.close(wfd)  # QEMU holds its own copy now; EOF on rfd means QEMU closed it
        copier = PipeCopier(rfd, fh)
        thread = threading.Thread(target=copier.run, name="wincrash-dump-copy", daemon=True)
        thread.start()
        try:
            await _start(qmp, f"fd:{fdname}", fmt)
            while thread.is_alive():
                progress(copier.copied, ram)
                await _drain_events(qmp, listener, timeline, False, 0)
                await asyncio.sleep(0.1)
                if timeline.completed is not None and timeline.completed.get("error"):
                    copier.cancel.set()
        except QemuGoneError:
            copier.cancel.set()
            raise _qemu_exited(where, "no file was written") from None
        except BaseException:  # Ctrl-C (CancelledError) or anything else: stop QEMU writing, clean up
            copier.cancel.set()
            thread.join()
            os.close(rfd)
            rfd = -1
            # Best effort while already unwinding: let QEMU report the failed write and resume the guest.
            # BaseException because a second Ctrl-C (CancelledError) must not replace the first error.
            with contextlib.suppress(BaseException):
                await asyncio.shield(_drain_events(qmp, listener, timeline, True, 10))
            raise
        thread.join()
        if copier.error is not None:
            os.close(rfd)  # QEMU's next write fails: the dump ends and the guest resumes
            rfd = -1
            with contextlib.suppress(BaseException):
                await asyncio.shield(_drain_events(qmp, listener, timeline, True, 10))
            raise WincrashError(f"{failing}: {describe_error(copier.error)}")
        progress(copier.copied, ram)
        try:
            await _drain_events(qmp, listener, timeline, True, 30)
        except QemuGoneError:
            raise _qemu_exited(where, "no file was written") from None
        if timeline.completed is None:
            raise DumpFailedError(f"{where}: QEMU closed the dump stream but never reported DUMP_COMPLETED")
        _check_completed(timeline, fmt, where)
        return copier.copied
    finally:
        if rfd >= 0:
            os.close(rfd)


def describe_error(exc: BaseException) -> str:
    """An OSError as its strerror (\"No space left on device\"), anything else as its text."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # already gone, or not ours to remove: the error being raised matters more
        path.unlink()


async def _dump_via_file(qmp: QmpSession, listener: EventListener, timeline: _Timeline, out: Path, fmt: str,
                         force: bool, ram: int, progress: ProgressFn) -> int:
    """TCP targets: QEMU opens and writes ``out`` itself (mode 0400, owned by QEMU's user)."""
    where = qmp.target.describe()
    if out.exists():
        if not force:
            raise WincrashError(f"{out}: already exists (use --force to overwrite)")
        out.unlink()
    try:
        await _start(qmp, f"file:{out}", fmt)
        while timeline.completed is None:
            state = await qmp.execute("query-dump")
            progress(int(state.get("completed", 0)), int(state.get("total", 0)) or ram)
            msg = await qmp.next_event(listener, 0.25)
            if msg is not None:
                timeline.record(msg)
        await _drain_events(qmp, listener, timeline, True, 10)
    except QemuGoneError:
        _remove(out)
        raise _qemu_exited(where, "the partial file was removed") from None
    except BaseException:
        _remove(out)  # QEMU keeps writing to the unlinked file until it is done; the guest resumes then
        raise
    try:
        _check_completed(timeline, fmt, where)
    except DumpFailedError:
        _remove(out)
        raise
    with contextlib.suppress(OSError):  # QEMU creates dumps 0400; a file another user owns stays so
        os.chmod(out, 0o600)
    return out.stat().st_size if out.exists() else 0
