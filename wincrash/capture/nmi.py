"""`wincrash nmi`: crash a running Windows guest on purpose, and optionally see it panic.

Windows turns an NMI into bugcheck 0x80 (NMI_HARDWARE_FAILURE) only when
HKLM\\SYSTEM\\CurrentControlSet\\Control\\CrashControl\\NMICrashDump = 1, and writes a dump only when
CrashDumpEnabled is set and the pagefile is big enough: `wincrash prepare` sets these offline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from wincrash.capture.backend import open_backend
from wincrash.capture.events import PanicInfo
from wincrash.errors import EXIT_PROBLEMS, WincrashError

GUEST_NEEDS_NMI = ("the guest must have NMICrashDump=1 (and CrashDumpEnabled) for an NMI to crash it "
                   "(`wincrash prepare` sets them offline), and a pvpanic device or -cpu ...,hv-crash for "
                   "QEMU to see the panic")
GUEST_NEEDS_KEYS = ("the guest must have CrashOnCtrlScroll=1 for its keyboard driver (`wincrash prepare`), "
                    "and a pvpanic device or -cpu ...,hv-crash for QEMU to see the panic")


@dataclass
class NmiResult:
    vm: dict[str, Any]
    method: str  # "nmi" or "keyboard"
    waited: float | None
    panic: PanicInfo | None

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "method": self.method, "waited": self.waited,
                "panic": self.panic.to_dict() if self.panic else None}


async def nmi_async(vm: str, connect: str | None, keyboard: bool, wait: float | None) -> NmiResult:
    async with open_backend(vm, connect) as backend:
        doing = "send the crash keys" if keyboard else "inject an NMI"
        await backend.require_running(doing)
        panic = None
        with backend.watch_panics():
            if keyboard:
                await backend.send_crash_keys()
            else:
                await backend.inject_nmi()
            if wait is not None:
                panic = await backend.wait_panic(wait)
                if panic is None:
                    raise WincrashError(
                        f"{backend.target.describe()}: no panic reported within {wait:g} s after the "
                        f"{'crash keys' if keyboard else 'NMI'}: {GUEST_NEEDS_KEYS if keyboard else GUEST_NEEDS_NMI}",
                        exit_code=EXIT_PROBLEMS,
                    )
        return NmiResult(vm=backend.target.to_dict(), method="keyboard" if keyboard else "nmi", waited=wait,
                         panic=panic)


def run_nmi(vm: str, connect: str | None = None, keyboard: bool = False, wait: float | None = None) -> NmiResult:
    """Synchronous entry point for the CLI."""
    if wait is not None and wait <= 0:
        raise WincrashError("--wait takes a positive number of seconds")
    return asyncio.run(nmi_async(vm, connect, keyboard, wait))
