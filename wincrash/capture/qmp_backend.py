"""VmBackend over a QMP socket (UNIX or TCP), with qemu.qmp."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from qemu.qmp import EventListener

from wincrash.capture.backend import DumpResult, ProgressFn, VmBackend, VmState
from wincrash.capture.dumpguest import dump_over_qmp
from wincrash.capture.events import PANIC_EVENTS, PanicInfo, parse_panic_event
from wincrash.capture.qmp import QmpSession
from wincrash.capture.target import Target

# Right Ctrl held, Scroll Lock pressed: sent twice (Windows' i8042prt/kbdhid CrashOnCtrlScroll).
CRASH_KEYS = [{"type": "qcode", "data": "ctrl_r"}, {"type": "qcode", "data": "scroll_lock"}]


class QmpBackend(VmBackend):
    def __init__(self, session: QmpSession) -> None:
        self.session = session
        self.target: Target = session.target
        self._panics: EventListener | None = None

    @classmethod
    async def open(cls, target: Target) -> QmpBackend:
        session = QmpSession(target)
        await session.connect()
        return cls(session)

    async def close(self) -> None:
        await self.session.close()

    async def state(self) -> VmState:
        status = await self.session.status()
        return VmState(status=str(status.get("status", "unknown")), running=bool(status.get("running")))

    async def inject_nmi(self) -> None:
        await self.session.execute("inject-nmi")

    async def send_crash_keys(self) -> None:
        for _ in range(2):
            await self.session.execute("send-key", {"keys": CRASH_KEYS, "hold-time": 100})
            await asyncio.sleep(0.2)

    @contextlib.contextmanager
    def watch_panics(self) -> Iterator[None]:
        with self.session.listen(*PANIC_EVENTS) as listener:
            self._panics = listener
            try:
                yield
            finally:
                self._panics = None

    async def wait_panic(self, timeout: float) -> PanicInfo | None:
        assert self._panics is not None, "wait_panic() outside watch_panics()"
        deadline = time.monotonic() + timeout
        msg = await self.session.next_event(self._panics, max(0.0, deadline - time.monotonic()))
        if msg is None:
            return None
        return parse_panic_event(msg["event"], msg.get("data"))

    async def memory_size(self) -> int:
        sizes = await self.session.execute("query-memory-size-summary")
        return int(sizes.get("base-memory", 0)) + int(sizes.get("plugged-memory", 0))

    async def dump_formats(self) -> list[str]:
        caps = await self.session.execute("query-dump-guest-memory-capability")
        return list(caps.get("formats", []))

    async def dump(self, out: Path, fmt: str, force: bool, progress: ProgressFn) -> DumpResult:
        return await dump_over_qmp(self.session, out, fmt, force, progress)
