"""`wincrash nmi`: crash a running Windows guest on purpose, and optionally see it panic.

Windows turns an NMI into bugcheck 0x80 (NMI_HARDWARE_FAILURE) only when
HKLM\\SYSTEM\\CurrentControlSet\\Control\\CrashControl\\NMICrashDump = 1, and writes a dump only when
CrashDumpEnabled is set and the pagefile is big enough: `wincrash prepare` sets these offline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from wincrash.errors import EXIT_PROBLEMS, WincrashError
from wincrash.vm.opener import open_vm
from wincrash.vm.panic import PanicInfo

GUEST_NEEDS_NMI = ("the guest must have NMICrashDump=1 (and CrashDumpEnabled) for an NMI to crash it "
                   "(`wincrash prepare` sets them offline), and a pvpanic device or -cpu ...,hv-crash for "
                   "QEMU to see the panic")
GUEST_NEEDS_KEYS = ("the guest must have CrashOnCtrlScroll=1 for its keyboard driver (`wincrash prepare`), "
                    "and a pvpanic device or -cpu ...,hv-crash for QEMU to see the panic")


@dataclass(frozen=True)
class NmiResult:
    """What `wincrash nmi` did: the VM (``Target.to_dict``), ``method`` "nmi" or "keyboard", the seconds it
    waited for a panic (None: did not wait) and the panic report, if one came."""

    vm: dict[str, Any]
    method: str
    waited: float | None
    panic: PanicInfo | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for --json results."""
        return {"vm": self.vm, "method": self.method, "waited": self.waited,
                "panic": self.panic.to_dict() if self.panic else None}


async def _nmi(vm: str, connect: str | None, keyboard: bool, wait: float | None) -> NmiResult:
    async with open_vm(vm, connect) as connection:
        doing = "send the crash keys" if keyboard else "inject an NMI"
        await connection.require_running(doing)
        panic = None
        with connection.watch_panics():
            if keyboard:
                await connection.send_crash_keys()
            else:
                await connection.inject_nmi()
            if wait is not None:
                panic = await connection.wait_panic(wait)
                if panic is None:
                    raise WincrashError(
                        f"{connection.target.describe()}: no panic reported within {wait:g} s after the "
                        f"{'crash keys' if keyboard else 'NMI'}: {GUEST_NEEDS_KEYS if keyboard else GUEST_NEEDS_NMI}",
                        exit_code=EXIT_PROBLEMS,
                    )
        return NmiResult(vm=connection.target.to_dict(), method="keyboard" if keyboard else "nmi", waited=wait,
                         panic=panic)


def run_nmi(vm: str, connect: str | None = None, keyboard: bool = False, wait: float | None = None) -> NmiResult:
    """`wincrash nmi VM`: inject an NMI (or, with ``keyboard``, the crash keys); wait ``wait`` seconds for a panic.

    :raises WincrashError: ``wait`` not positive; no panic within ``wait`` (exit 1); every ``VmError`` of
        opening the VM, ``VmNotRunningError`` when its vCPUs are stopped.
    """
    if wait is not None and wait <= 0:
        raise WincrashError("--wait takes a positive number of seconds")
    return asyncio.run(_nmi(vm, connect, keyboard, wait))
