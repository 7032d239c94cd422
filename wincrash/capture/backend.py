"""The operations every capture command needs, whatever reaches the VM (QMP or libvirt).

nmi, dump and capture are written once against this interface; qmp_backend and libvirt_backend
implement it. Everything is async because the QMP side is (qemu.qmp); the libvirt side runs its
blocking calls in threads.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wincrash.capture.events import PanicInfo
from wincrash.capture.target import Target, parse_target

DUMP_FORMATS = ("elf", "kdump-zlib", "win-dmp")


@dataclass
class VmState:
    status: str  # QEMU run state: running, paused, guest-panicked, ...
    running: bool


@dataclass
class DumpResult:
    """What a dump produced, and what it cost the guest."""

    path: Path
    format: str
    size: int  # bytes written
    guest_ram: int
    seconds: float  # wall-clock time of the whole dump
    paused_seconds: float | None  # how long the vCPUs were stopped by the dump (None: already stopped)
    status_before: str
    status_after: str

    @property
    def throughput(self) -> float:
        return self.size / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "size": self.size, "guest_ram": self.guest_ram,
                "seconds": round(self.seconds, 3), "throughput_mib_s": round(self.throughput / 2**20, 1),
                "paused_seconds": None if self.paused_seconds is None else round(self.paused_seconds, 3),
                "status_before": self.status_before, "status_after": self.status_after}


ProgressFn = Callable[[int, int], None]  # (done, total) in bytes


class VmBackend(abc.ABC):
    """One open connection to one VM."""

    target: Target

    @abc.abstractmethod
    async def state(self) -> VmState: ...

    async def require_running(self, doing: str) -> VmState:
        from wincrash.errors import WincrashError

        state = await self.state()
        if not state.running:
            hint = " (resume it first: QMP 'cont' or 'virsh resume')" if state.status in ("paused", "debug") else ""
            raise WincrashError(f"{self.target.describe()}: the VM is not running (status: {state.status}), "
                                f"cannot {doing}{hint}")
        return state

    @abc.abstractmethod
    async def inject_nmi(self) -> None: ...

    @abc.abstractmethod
    async def send_crash_keys(self) -> None:
        """Right Ctrl + Scroll Lock, twice: Windows' keyboard crash (CrashOnCtrlScroll=1)."""

    @abc.abstractmethod
    def watch_panics(self) -> contextlib.AbstractContextManager[None]:
        """Start collecting panic reports now, before the action that causes them."""

    @abc.abstractmethod
    async def wait_panic(self, timeout: float) -> PanicInfo | None: ...

    @abc.abstractmethod
    async def memory_size(self) -> int: ...

    @abc.abstractmethod
    async def dump_formats(self) -> list[str]: ...

    @abc.abstractmethod
    async def dump(self, out: Path, fmt: str, force: bool, progress: ProgressFn) -> DumpResult: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


@contextlib.asynccontextmanager
async def open_backend(vm: str, connect: str | None = None) -> AsyncIterator[VmBackend]:
    """Resolve the VM argument and open the right backend for it."""
    target = parse_target(vm, connect)
    backend: VmBackend
    if target.kind == "libvirt":
        from wincrash.capture.libvirt_backend import LibvirtBackend

        backend = await LibvirtBackend.open(target)
    else:
        from wincrash.capture.qmp_backend import QmpBackend

        backend = await QmpBackend.open(target)
    try:
        yield backend
    finally:
        await backend.close()
