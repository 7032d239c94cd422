"""A small QMP session on qemu.qmp (asyncio) that speaks in one-line, typed errors.

qemu.qmp reports failures as nested exception types (ConnectError wrapping OSError, GreetingError,
ExecInterruptedError ...). A support engineer needs to know which of a handful of things went
wrong: no such socket, a socket that is not QMP (or whose monitor another client holds), nobody
listening, QEMU refusing a command, or QEMU dying under us. This module does that translation once,
into the types of ``wincrash.vm.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecInterruptedError, ExecuteError, QMPClient, QMPError, Runstate
from qemu.qmp.message import Message

from wincrash.vm.errors import CommandRefusedError, NotQmpError, QemuGoneError, VmError, VmUnreachableError
from wincrash.vm.target import Target

CONNECT_TIMEOUT = 5.0  # seconds for the connection and QEMU's greeting
COMMAND_TIMEOUT = 30.0  # seconds for one command's answer

# qemu.qmp logs every protocol hiccup at WARNING/ERROR; we report them ourselves, once.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


def _connect_error(target: Target, exc: BaseException) -> VmError:
    where = target.describe()
    inner = exc.exc if isinstance(exc, ConnectError) else exc
    if isinstance(inner, FileNotFoundError):
        return VmUnreachableError(f"{where}: no such socket")
    if isinstance(inner, ConnectionRefusedError):
        return VmUnreachableError(
            f"{where}: connection refused: no QEMU is listening (a stale socket of a VM that exited?)"
        )
    if isinstance(inner, PermissionError):
        return VmUnreachableError(f"{where}: permission denied (run as the user that owns the VM, or as root)")
    if isinstance(inner, OSError) and not isinstance(inner, ConnectionResetError):
        return VmUnreachableError(f"{where}: cannot connect: {(inner.strerror or str(inner)).lower()}")
    # EOFError, ConnectionResetError, GreetingError, NegotiationError, ServerParseError, ...
    return NotQmpError(f"{where}: not a QMP socket (no QMP greeting from the other end)")


class QmpSession:
    """One QMP connection to one QEMU (UNIX socket or TCP); ``connect()`` first, ``close()`` at the end."""

    def __init__(self, target: Target, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.client = QMPClient("wincrash")

    async def connect(self) -> None:
        """Connect and negotiate capabilities.

        :raises VmUnreachableError: no such socket, connection refused, permission denied, other OS errors.
        :raises NotQmpError: the peer is not QMP, or stays silent for ``connect_timeout`` seconds (QEMU
            serves one client per QMP socket, so a busy monitor looks like this).
        """
        try:
            await asyncio.wait_for(self.client.connect(self.target.qmp_address()), self.connect_timeout)
        except TimeoutError:
            raise NotQmpError(
                f"{self.target.describe()}: not a QMP socket, or its monitor is busy: no QMP greeting within "
                f"{self.connect_timeout:g} s (QEMU serves one QMP client per socket: is libvirt or another "
                "tool connected?)"
            ) from None
        except (ConnectError, QMPError, OSError, EOFError) as exc:
            raise _connect_error(self.target, exc) from None

    async def close(self) -> None:
        """Disconnect; never raises (a QEMU that already went away is what we wanted anyway)."""
        # Broad on purpose: qemu.qmp documents disconnect() as re-raising whatever Exception ended its
        # reader/writer tasks (EOFError, OSError, ProtocolError, ...). That only says the link was already
        # broken, which at close is no news; the error that matters was reported when it happened.
        with contextlib.suppress(Exception):
            await self.client.disconnect()

    @property
    def connected(self) -> bool:
        """True while the QMP link is up."""
        return self.client.runstate == Runstate.RUNNING

    def _gone(self, doing: str) -> QemuGoneError:
        return QemuGoneError(f"{self.target.describe()}: QEMU closed the QMP connection during {doing} "
                             "(did the VM exit or was QEMU killed?)")

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None,
                      timeout: float = COMMAND_TIMEOUT) -> Any:
        """Run one QMP command and return its ``return`` value (JSON: dict, list, str, ...).

        :raises CommandRefusedError: QEMU answered with an error (``error_class``, e.g. CommandNotFound).
        :raises VmUnreachableError: no answer within ``timeout`` seconds.
        :raises QemuGoneError: the link dropped before or during the command.
        """
        if not self.connected:
            raise self._gone(command)
        try:
            return await asyncio.wait_for(self.client.execute(command, arguments), timeout)
        except ExecuteError as exc:
            raise CommandRefusedError(f"QEMU refused {command}: {exc.error.desc}", command, exc.error_class,
                                      exc.error.desc) from None
        except TimeoutError:
            raise VmUnreachableError(
                f"{self.target.describe()}: QEMU did not answer {command} within {timeout:g} s"
            ) from None
        except (ExecInterruptedError, QMPError, OSError, EOFError):
            raise self._gone(command) from None

    def send_fd(self, fd: int) -> None:
        """Pass a file descriptor over the UNIX socket (SCM_RIGHTS); follow with ``getfd``.

        :raises VmError: the target is not a UNIX socket (TCP cannot carry descriptors).
        :raises QemuGoneError: the socket is closed or broken.
        """
        if self.target.kind != "unix":
            raise VmError(f"{self.target.describe()}: file descriptors can only be passed over a UNIX socket")
        if not self.connected:
            raise self._gone("getfd")
        try:
            self.client.send_fd_scm(fd)
        except OSError:
            raise self._gone("getfd") from None

    @contextlib.contextmanager
    def listen(self, *names: str) -> Iterator[EventListener]:
        """Start collecting the named events now (before the command that triggers them)."""
        with self.client.listener(names) as listener:
            yield listener

    async def next_event(self, listener: EventListener, timeout: float | None) -> Message | None:
        """The next event from ``listener``, waiting up to ``timeout`` seconds; None on timeout.

        :raises QemuGoneError: the link dropped first.
        """
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
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if get in done:
            return get.result()
        if gone in done:
            raise self._gone("the wait for an event")
        return None

    async def _wait_disconnect(self) -> None:
        while self.client.runstate == Runstate.RUNNING:
            await self.client.runstate_changed()
