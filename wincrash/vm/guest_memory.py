"""Guest memory as the VM layer sees it: how big it is, and what a dump-guest-memory produced.

QEMU's dump-guest-memory (qapi/dump.json) writes every RAM block of the guest; its size is what
``query-memory-size-summary`` reports (base + hot-plugged memory). Both transports (QMP and libvirt's
virDomainCoreDumpWithFormat, which runs the same QEMU command) return a ``DumpResult``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wincrash.vm.runstate import RunState

# dump-guest-memory's formats (DumpGuestMemoryFormat) that wincrash offers: ELF (paging=false),
# makedumpfile's flattened kdump with zlib, and QEMU's own Windows dump (needs vmcoreinfo).
DUMP_FORMATS = ("elf", "kdump-zlib", "win-dmp")

ProgressFn = Callable[[int, int], None]
"""Progress callback: (bytes done, bytes total)."""


def guest_ram_size(summary: Mapping[str, Any]) -> int:
    """Bytes of guest RAM from a ``query-memory-size-summary`` reply: base-memory + plugged-memory.

    ``plugged-memory`` is absent when the VM has no hot-pluggable memory (QMP MemoryInfo).
    """
    return int(summary.get("base-memory", 0)) + int(summary.get("plugged-memory", 0))


def explain_dump_error(fmt: str, error: str) -> str:
    """QEMU's dump error text, with what to do about it (vmcoreinfo for win-dmp, a cancelled pipe)."""
    if "vmcoreinfo" in error or (fmt == "win-dmp" and "win-dump" in error):
        return (f"{error}: format win-dmp needs QEMU started with -device vmcoreinfo AND the virtio-win "
                "fwcfg driver running in the guest; use --format elf and `wincrash convert` instead")
    if "Broken pipe" in error or "EPIPE" in error:
        return f"{error} (the dump was cancelled)"
    return error


@dataclass(frozen=True)
class DumpResult:
    """What a dump produced, and what it cost the guest.

    ``size`` and ``guest_ram`` in bytes; ``seconds`` the wall-clock time of the whole dump;
    ``paused_seconds`` how long the vCPUs were stopped by it (QEMU's STOP/RESUME timestamps, or the
    whole dump for libvirt), None when the guest was already stopped.
    """

    path: Path
    format: str
    size: int
    guest_ram: int
    seconds: float
    paused_seconds: float | None
    status_before: RunState
    status_after: RunState

    @property
    def throughput(self) -> float:
        """Bytes written per second (0 for an instant dump)."""
        return self.size / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for --json results (seconds rounded to ms, throughput in MiB/s)."""
        return {"path": str(self.path), "format": self.format, "size": self.size, "guest_ram": self.guest_ram,
                "seconds": round(self.seconds, 3), "throughput_mib_s": round(self.throughput / 2**20, 1),
                "paused_seconds": None if self.paused_seconds is None else round(self.paused_seconds, 3),
                "status_before": str(self.status_before), "status_after": str(self.status_after)}
