"""A small QMP session on qemu.qmp (asyncio) that speaks in one-line, actionable errors.

qemu.qmp reports failures as nested exception types (ConnectError wrapping OSError, GreetingError,
ExecInterruptedError ...). A support engineer needs to know which of a handful of things went
wrong: no such socket, a socket that is not QMP (or whose monitor another client holds), nobody
listening, the VM not running, or QEMU dying under us. This module does that translation once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecInterruptedError, ExecuteError, QMPClient, QMPError, Runstate
from qemu.qmp.message import Message

from wincrash.capture.target import Target
from wincrash.errors import WincrashError

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0

# qemu.qmp logs every protocol hiccup at WARNING/ERROR; we report them ourselves, once.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class QmpCommandError(WincrashError):
    """QEMU refused a command; ``error_class`` lets callers react to e.g. CommandNotFound."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU refused {command}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QemuGoneError(WincrashError):
    """The QMP connection dropped: QEMU exited, was killed, or crashed."""


def _connect_error(target: Target, exc: BaseException) -> WincrashError:
    where = target.describe()
    inner = exc.exc if isinstance(exc, ConnectError) else exc
    if isinstance(inner, FileNotFoundError):
        return WincrashError(f"{where}: no such socket")
    if isinstance(inner, ConnectionRefusedError):
        return WincrashError(
            f"{where}: connection refused: no QEMU is listening (a stale socket of a VM that exited?)"
        )
    if isinstance(inner, PermissionError):
        return WincrashError(f"{where}: permission denied (run as the user that owns the VM, or as root)")
    if isinstance(inner, (OSError,)) and not isinstance(inner, (EOFError, ConnectionResetError)):
        return WincrashError(f"{where}: cannot connect: {(inner.strerror or str(inner)).lower()}")
    # EOFError, ConnectionResetError, GreetingError, NegotiationError, ServerParseError, ...
    return WincrashError(f"{where}: not a QMP socket (no QMP greeting from the other end)")


class QmpSession:
    """One QMP connection to one VM; use ``async with QmpSession(target) as qmp``."""

    def __init__(self, target: Target, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.client = QMPClient("wincrash")

    async def __aenter__(self) -> QmpSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and negotiate; a peer that stays silent is "not QMP, or monitor already in use"."""
        try:
            await asyncio.wait_for(self.client.connect(self.target.qmp_address()), self.connect_timeout)
        except TimeoutError:
            raise WincrashError(
                f"{self.target.describe()}: not a QMP socket, or its monitor is busy: no QMP greeting within "
                f"{self.connect_timeout:g} s (QEMU serves one QMP client per socket: is libvirt or another "
                "tool connected?)"
            ) from None
        except (ConnectError, QMPError, OSError, EOFError) as exc:
            raise _connect_error(self.target, exc) from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()

    @property
    def connected(self) -> bool:
        return self.client.runstate == Runstate.RUNNING

    def _gone(self, doing: str) -> QemuGoneError:
        return QemuGoneError(f"{self.target.describe()}: QEMU closed the QMP connection during {doing} "
                             "(did the VM exit or was QEMU killed?)")

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None,
                      timeout: float = COMMAND_TIMEOUT) -> Any:
        """Run one command; QEMU errors become QmpCommandError, a dropped link QemuGoneError."""
        if not self.connected:
            raise self._gone(command)
        try:
            return await asyncio.wait_for(self.client.execute(command, arguments), timeout)
        except ExecuteError as exc:
            raise QmpCommandError(command, exc.error_class, exc.error.desc) from None
        except TimeoutError:
            raise WincrashError(
                f"{self.target.describe()}: QEMU did not answer {command} within {timeout:g} s"
            ) from None
        except (ExecInterruptedError, QMPError, OSError, EOFError):
            raise self._gone(command) from None

    def send_fd(self, fd: int, name: str) -> None:
        """Pass a file descriptor over the UNIX socket (SCM_RIGHTS); follow with ``getfd``."""
        if self.target.kind != "unix":
            raise WincrashError(f"{self.target.describe()}: file descriptors can only be passed over a UNIX socket")
        self.client.send_fd_scm(fd)

    async def status(self) -> dict[str, Any]:
        """query-status: {'status': 'running'|'paused'|'guest-panicked'|..., 'running': bool}."""
        return await self.execute("query-status")

    async def require_running(self, doing: str) -> None:
        """Refuse early when the vCPUs are not running: an NMI to a paused VM is never delivered."""
        state = await self.status()
        if not state.get("running"):
            status = state.get("status", "unknown")
            hint = " (resume it with the QMP command 'cont' or 'virsh resume')" if status in ("paused", "debug") \
                else ""
            raise WincrashError(f"{self.target.describe()}: the VM is not running (status: {status}), "
                                f"cannot {doing}{hint}")

    @contextlib.contextmanager
    def listen(self, *names: str) -> Iterator[EventListener]:
        """Start collecting the named events now (before the command that triggers them)."""
        with self.client.listener(names) as listener:
            yield listener

    async def next_event(self, listener: EventListener, timeout: float | None) -> Message | None:
        """The next event from ``listener``; None on timeout; QemuGoneError if the link drops first."""
        if not listener.empty():
            return await listener.get()
        if not self.connected:
            raise self._gone("the wait for an event")
        get = asyncio.ensure_future(listener.get())
        gone = asyncio.ensure_future(self._wait_disconnect())
        try:
            done, _ = await asyncio.wait({get, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (get, gone):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        if get in done:
            return get.result()
        if gone in done:
            raise self._gone("the wait for an event")
        return None

    async def _wait_disconnect(self) -> None:
        while self.client.runstate == Runstate.RUNNING:
            await self.client.runstate_changed()


@contextlib.asynccontextmanager
async def qmp_session(target: Target, connect_timeout: float = CONNECT_TIMEOUT) -> AsyncIterator[QmpSession]:
    """Functional spelling of ``async with QmpSession(target)``."""
    session = QmpSession(target, connect_timeout)
    await session.connect()
    try:
        yield session
    finally:
        await session.close()
