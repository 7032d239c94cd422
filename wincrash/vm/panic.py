"""What the guest tells us when it panics: QEMU's GUEST_PANICKED event, decoded.

A pvpanic device only says "panicked". Hyper-V's crash MSRs (QEMU ``-cpu ...,hv-crash``, which
Windows uses when it sees the Hyper-V enlightenments) carry the bugcheck code and its four
parameters, which is what a support engineer wants to see before even opening the dump.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PANIC_EVENTS = ("GUEST_PANICKED", "GUEST_CRASHLOADED")


@dataclass(frozen=True)
class PanicInfo:
    """One panic report from the guest.

    ``event`` is QEMU's event name (or ``lifecycle`` / ``state`` when only libvirt's domain events or
    state told us); ``action`` what QEMU did (pause, poweroff, run); ``source`` who reported it
    (``pvpanic``, ``hyper-v`` for the crash MSRs, or the QEMU info type); ``bugcheck_code`` and the
    four ``parameters`` only come with Hyper-V's crash MSRs.
    """

    event: str
    action: str | None
    source: str
    bugcheck_code: int | None = None
    parameters: list[int] = field(default_factory=list)

    def describe(self) -> str:
        """One line: who reported the panic, what QEMU did, and the bugcheck when known."""
        text = f"guest panicked (reported by {self.source}"
        text += f", QEMU action: {self.action})" if self.action else ")"
        if self.bugcheck_code is not None:
            params = ", ".join(f"{p:#018x}" for p in self.parameters)
            text += f": bugcheck {self.bugcheck_code:#x} ({params})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for --json results."""
        return {"event": self.event, "action": self.action, "source": self.source,
                "bugcheck_code": self.bugcheck_code, "parameters": self.parameters}


def parse_panic_event(event: str, data: dict[str, Any] | None) -> PanicInfo:
    """Decode a GUEST_PANICKED / GUEST_CRASHLOADED event's ``data`` (qapi/run-state.json GuestPanicInformation).

    For ``hyper-v`` information Windows puts the bugcheck code in arg1 (HV_X64_MSR_CRASH_P0) and its
    parameters in arg2..arg5 (P1..P4). Never raises: missing fields give ``None`` / zeros.
    """
    data = data or {}
    info = data.get("info") or {}
    kind = info.get("type")
    if kind == "hyper-v":
        args = [int(info.get(f"arg{i}", 0)) for i in range(1, 6)]
        # Windows writes the bugcheck code in P0 (arg1), parameters in P1..P4.
        return PanicInfo(event, data.get("action"), "hyper-v", args[0], args[1:])
    return PanicInfo(event, data.get("action"), kind or "pvpanic")
