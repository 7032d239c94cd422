"""QEMU's run states, as ``query-status`` names them, and what each allows.

Source: QEMU's qapi/run-state.json (enum RunState, QEMU 7.2), plus ``shutoff``, which only libvirt
reports (a defined domain with no QEMU process), and ``unknown`` for a name this table lacks.
Every decision on a run state (can we inject an NMI, can we dump, is the VM usable) reads a set
here, so that the capture commands and doctor agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RunState(StrEnum):
    """One run state; the value is QEMU's spelling (a ``str``, so JSON and messages show it as is)."""

    DEBUG = "debug"
    INMIGRATE = "inmigrate"
    INTERNAL_ERROR = "internal-error"
    IO_ERROR = "io-error"
    PAUSED = "paused"
    POSTMIGRATE = "postmigrate"
    PRELAUNCH = "prelaunch"
    FINISH_MIGRATE = "finish-migrate"
    RESTORE_VM = "restore-vm"
    RUNNING = "running"
    SAVE_VM = "save-vm"
    SHUTDOWN = "shutdown"
    SUSPENDED = "suspended"
    WATCHDOG = "watchdog"
    GUEST_PANICKED = "guest-panicked"
    COLO = "colo"
    SHUTOFF = "shutoff"  # libvirt only: the domain is defined but no QEMU runs
    UNKNOWN = "unknown"  # a state QEMU or libvirt named that this table does not know

    @classmethod
    def from_name(cls, name: object) -> RunState:
        """The member for ``name`` (``query-status``'s ``status``); ``UNKNOWN`` for anything else."""
        try:
            return cls(str(name))
        except ValueError:
            return cls.UNKNOWN


# The vCPUs are stopped but the VM is intact: `cont` / `virsh resume` (or the end of a migration) restarts them.
VCPUS_STOPPED = frozenset({RunState.PAUSED, RunState.PRELAUNCH, RunState.DEBUG, RunState.SUSPENDED,
                           RunState.INMIGRATE, RunState.POSTMIGRATE, RunState.FINISH_MIGRATE})
# Stopped by the user or a debugger: the QMP command `cont` (or `virsh resume`) is the fix to suggest.
RESUMABLE = frozenset({RunState.PAUSED, RunState.DEBUG})
# QEMU can run dump-guest-memory in these (a stopped or panicked guest is the normal case after a crash).
DUMPABLE = frozenset({RunState.RUNNING, RunState.PAUSED, RunState.GUEST_PANICKED, RunState.INTERNAL_ERROR,
                      RunState.IO_ERROR, RunState.DEBUG, RunState.SUSPENDED, RunState.WATCHDOG,
                      RunState.PRELAUNCH, RunState.SHUTDOWN})


@dataclass(frozen=True)
class VmStatus:
    """A VM's run state and whether its vCPUs execute (``query-status``: ``status``, ``running``)."""

    state: RunState
    running: bool
