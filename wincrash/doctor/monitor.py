"""One way to ask QEMU questions, whether we hold its QMP socket or libvirt does.

QMP targets go through capture.qmp.QmpSession; libvirt domains through the capture libvirt backend's
connection plus libvirt-qemu's monitor passthrough (libvirt owns the domain's QMP socket). Both
raise QmpCommandError for a refused command, so fact gathering can treat "this QEMU does not know
that command" the same way on both.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from wincrash.capture.qmp import QmpCommandError, QmpSession
from wincrash.capture.target import Target, parse_target
from wincrash.errors import WincrashError


class Monitor(abc.ABC):
    target: Target

    @abc.abstractmethod
    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any: ...


class QmpMonitor(Monitor):
    def __init__(self, session: QmpSession) -> None:
        self.session = session
        self.target = session.target

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        return await self.session.execute(command, arguments)


class LibvirtMonitor(Monitor):
    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.target = backend.target

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        try:
            import libvirt_qemu
        except ImportError:
            raise WincrashError("doctor needs libvirt-qemu's monitor passthrough for libvirt domains "
                                "(Debian: apt install python3-libvirt)") from None
        request = json.dumps({"execute": command, **({"arguments": dict(arguments)} if arguments else {})})
        try:
            reply = await asyncio.to_thread(libvirt_qemu.qemuMonitorCommand, self.backend.dom, request, 0)
        except self.backend.libvirt.libvirtError as exc:
            raise WincrashError(f"{self.target.describe()}: libvirt cannot pass QMP commands to this domain "
                                f"({exc.get_error_message()}); doctor needs a running QEMU/KVM domain") from None
        data = json.loads(reply)
        if "error" in data:
            raise QmpCommandError(command, data["error"].get("class", ""), data["error"].get("desc", ""))
        return data.get("return")


@contextlib.asynccontextmanager
async def open_monitor(vm: str, connect: str | None) -> AsyncIterator[Monitor]:
    """Resolve the VM argument (capture.target) and open QMP or libvirt for it."""
    target = parse_target(vm, connect)
    if target.kind == "libvirt":
        from wincrash.capture.libvirt_backend import LibvirtBackend

        backend = await LibvirtBackend.open(target)
        try:
            state = await backend.state()
            if state.status in ("shutoff", "shutdown"):
                raise WincrashError(f"{target.describe()}: the domain is {state.status}: start it "
                                    f"(`virsh -c {target.uri} start {target.domain}`) and run doctor again")
            yield LibvirtMonitor(backend)
        finally:
            await backend.close()
        return
    session = QmpSession(target)
    await session.connect()
    try:
        yield QmpMonitor(session)
    finally:
        await session.close()
