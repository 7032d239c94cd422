"""``VmConnection`` over our own QMP socket (UNIX or TCP), with qemu.qmp."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener

from wincrash.vm.connection import VmConnection
from wincrash.vm.guest_memory import ProgressFn
from wincrash.vm.panic import PANIC_EVENTS, PanicInfo, parse_panic_event
from wincrash.vm.qmp_memory_dump import stream_qmp_dump, write_qmp_dump
from wincrash.vm.qmp_session import QmpSession
from wincrash.vm.runstate import RunState, VmStatus
from wincrash.vm.target import Target

# Right Ctrl held, Scroll Lock pressed: sent twice (Windows' i8042prt/kbdhid CrashOnCtrlScroll).
CRASH_KEYS = [{"type": "qcode", "data": "ctrl_r"}, {"type": "qcode", "data": "scroll_lock"}]
KEY_HOLD_MS = 100
KEY_GAP_SECONDS = 0.2


class QmpConnection(VmConnection):
    """A VM reached through its QMP socket; QEMU serves one client per socket, so we hold it exclusively."""

    def __init__(self, session: QmpSession) -> None:
        self.session = session
        self.target: Target = session.target
        self._panics: EventListener | None = None
        self._scratch: str | None = None  # private directory for pmemsave files

    @classmethod
    async def open(cls, target: Target) -> QmpConnection:
        """Connect to ``target`` (a ``unix`` or ``tcp`` Target).

        :raises VmUnreachableError: nothing listens there, or permission denied.
        :raises NotQmpError: the peer is not QMP or its monitor is busy.
        """
        session = QmpSession(target)
        await session.connect()
        return cls(session)

    async def close(self) -> None:
        await self.session.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def stream_unsupported(self) -> str | None:
        if self.target.kind != "unix":
            return "over TCP no file descriptor can be passed to QEMU, so the dump cannot be streamed"
        return None

    async def stream_dump(self, sink: Any, progress: ProgressFn) -> tuple[int, float | None]:
        return await stream_qmp_dump(self.session, sink, await self.memory_size(), progress)

    async def read_physical(self, paddr: int, size: int) -> bytes:
        """pmemsave into a file of a private (0700) directory, read back and removed: QEMU runs as our user
        when we may use its UNIX socket without libvirt."""
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="wincrash-peek-")
        path = os.path.join(self._scratch, "peek")
        await self.session.execute("pmemsave", {"val": paddr, "size": size, "filename": path})
        with open(path, "rb") as fh:
            data = fh.read()
        os.unlink(path)
        return data

    async def status(self) -> VmStatus:
        reply = await self.session.execute("query-status")
        return VmStatus(RunState.from_name(reply.get("status")), bool(reply.get("running")))

    async def qmp(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        return await self.session.execute(command, arguments)

    async def inject_nmi(self) -> None:
        await self.session.execute("inject-nmi")

    async def send_crash_keys(self) -> None:
        for _ in range(2):
            await self.session.execute("send-key", {"keys": CRASH_KEYS, "hold-time": KEY_HOLD_MS})
            await asyncio.sleep(KEY_GAP_SECONDS)

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
        msg = await self.session.next_event(self._panics, max(0.0, timeout))
        if msg is None:
            return None
        return parse_panic_event(msg["event"], msg.get("data"))

    async def dump_formats(self) -> list[str]:
        caps = await self.session.execute("query-dump-guest-memory-capability")
        return list(caps.get("formats", []))

    async def _write_dump(self, out: Path, fmt: str, force: bool, ram: int, before: VmStatus,
                          progress: ProgressFn) -> tuple[int, float | None]:
        return await write_qmp_dump(self.session, out, fmt, force, ram, progress)
