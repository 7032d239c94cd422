"""What can go wrong when talking to a VM, as types a caller can react to.

Every error here is a ``VmError``, a ``WincrashError``: its message is one line fit for a support
engineer (the CLI prints it as ``wincrash: error: ...``, exit code 2) and names the VM. The types let
callers react to the cause (e.g. doctor notes a ``CommandRefusedError`` as "unknown" and carries on)
instead of parsing messages.
"""

from __future__ import annotations

from wincrash.errors import WincrashError


class VmError(WincrashError):
    """Base of every VM-layer error (exit code 2); also used as is for a bad VM argument."""


class VmUnreachableError(VmError):
    """Nobody answers there: no such socket or domain, connection refused, permission denied, no reply in time."""


class NotQmpError(VmError):
    """Something answers, but it does not speak QMP (wrong file or socket, busy monitor, non-QEMU libvirt domain)."""


class VmNotRunningError(VmError):
    """The vCPUs are stopped (or the VM is off), so the operation would never take effect.

    ``status`` is the run state found (a ``wincrash.vm.runstate.RunState``).
    """

    def __init__(self, message: str, status: object) -> None:
        super().__init__(message)
        self.status = status


class CommandRefusedError(VmError):
    """QEMU (or libvirt on its behalf) refused one command; the connection is still usable.

    ``command`` is the QMP command (or the libvirt action), ``error_class`` QEMU's error class
    (e.g. ``CommandNotFound``; empty for libvirt), ``desc`` QEMU's own description.
    """

    def __init__(self, message: str, command: str, error_class: str, desc: str) -> None:
        super().__init__(message)
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QemuGoneError(VmError):
    """The connection dropped mid-conversation: QEMU exited, was killed, or crashed."""


class DumpFailedError(VmError):
    """dump-guest-memory was refused before it started, or reported failure when it ended."""
