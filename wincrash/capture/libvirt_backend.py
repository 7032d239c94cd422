"""VmBackend for libvirt domains (libvirt owns their QMP monitor, so we go through its API).

NMI: virDomainInjectNMI; keys: virDomainSendKey; dump: virDomainCoreDumpWithFormat with
VIR_DUMP_MEMORY_ONLY (libvirt opens the file and hands QEMU the descriptor: this is QEMU's
dump-guest-memory, paging=false); panics: lifecycle events (crashed / paused-panicked) plus, on
the QEMU driver, the raw GUEST_PANICKED monitor event, which carries Hyper-V's bugcheck code.
libvirt's callbacks run on the asyncio loop through libvirtaio.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wincrash.capture.backend import DUMP_FORMATS, DumpResult, ProgressFn, VmBackend, VmState
from wincrash.capture.events import PanicInfo, parse_panic_event
from wincrash.capture.target import Target
from wincrash.errors import WincrashError
from wincrash.output import check_destination, check_free_space

KEY_RIGHTCTRL, KEY_SCROLLLOCK = 97, 70  # linux keycodes

_LIBVIRT_FORMATS = {"elf": "VIR_DOMAIN_CORE_DUMP_FORMAT_RAW", "kdump-zlib": "VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB",
                    "win-dmp": "VIR_DOMAIN_CORE_DUMP_FORMAT_WIN_DMP"}


def _import_libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise WincrashError("libvirt domain names need the libvirt Python bindings "
                            "(Debian: apt install python3-libvirt; PyPI: libvirt-python)") from None
    return libvirt


def _status(libvirt: Any, state: int, reason: int) -> VmState:
    if state == libvirt.VIR_DOMAIN_RUNNING:
        return VmState("running", True)
    if state == libvirt.VIR_DOMAIN_CRASHED or (
            state == libvirt.VIR_DOMAIN_PAUSED and reason in (libvirt.VIR_DOMAIN_PAUSED_CRASHED,)):
        return VmState("guest-panicked", False)
    names = {libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
             libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_BLOCKED: "blocked",
             libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended"}
    return VmState(names.get(state, f"state-{state}"), state == libvirt.VIR_DOMAIN_BLOCKED)


class LibvirtBackend(VmBackend):
    def __init__(self, target: Target, libvirt: Any, conn: Any, dom: Any) -> None:
        self.target = target
        self.libvirt, self.conn, self.dom = libvirt, conn, dom
        self._panics: asyncio.Queue[PanicInfo] | None = None
        self._aio: Any = None

    @classmethod
    async def open(cls, target: Target) -> LibvirtBackend:
        libvirt = _import_libvirt()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # we report errors ourselves, once
        aio = None
        with contextlib.suppress(Exception):
            import libvirtaio

            aio = libvirtaio.virEventRegisterAsyncIOImpl(loop=asyncio.get_running_loop())
        try:
            conn = await asyncio.to_thread(libvirt.open, target.uri)
        except libvirt.libvirtError as exc:
            raise WincrashError(f"cannot connect to libvirt at {target.uri}: {exc.get_error_message()}") from None
        try:
            dom = conn.lookupByName(target.domain)
        except libvirt.libvirtError as exc:
            conn.close()
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise WincrashError(f"no libvirt domain named {target.domain!r} at {target.uri} "
                                    f"(see `virsh -c {target.uri} list --all`; a socket path needs a '/')") from None
            raise WincrashError(f"{target.describe()}: {exc.get_error_message()}") from None
        backend = cls(target, libvirt, conn, dom)
        backend._aio = aio
        return backend

    async def close(self) -> None:
        """Close the connection while the loop still runs, so libvirtaio can drop its handles cleanly."""
        import gc

        self.dom = None
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = None
        gc.collect()
        if self._aio is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._aio.drain(), 5)
        await asyncio.sleep(0)

    def _call(self, doing: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.libvirt.libvirtError as exc:
            raise WincrashError(f"{self.target.describe()}: cannot {doing}: {exc.get_error_message()}") from None

    async def state(self) -> VmState:
        state, reason = self._call("read the domain state", self.dom.state)
        return _status(self.libvirt, state, reason)

    async def inject_nmi(self) -> None:
        self._call("inject an NMI", self.dom.injectNMI, 0)

    async def send_crash_keys(self) -> None:
        for _ in range(2):
            self._call("send keys", self.dom.sendKey, self.libvirt.VIR_KEYCODE_SET_LINUX, 100,
                       [KEY_RIGHTCTRL, KEY_SCROLLLOCK], 2, 0)
            await asyncio.sleep(0.2)

    @contextlib.contextmanager
    def watch_panics(self) -> Iterator[None]:
        lv = self.libvirt
        queue: asyncio.Queue[PanicInfo] = asyncio.Queue()
        self._panics = queue
        ids: list[tuple[str, int]] = []

        def lifecycle(_conn: Any, _dom: Any, event: int, detail: int, _opaque: Any) -> None:
            if event == lv.VIR_DOMAIN_EVENT_CRASHED or (
                    event == lv.VIR_DOMAIN_EVENT_SUSPENDED and detail == lv.VIR_DOMAIN_EVENT_SUSPENDED_PANICKED):
                queue.put_nowait(PanicInfo("lifecycle", None, "libvirt lifecycle event"))

        def monitor(_conn: Any, _dom: Any, event: str, _secs: int, _usecs: int, details: Any, _opaque: Any) -> None:
            import json

            data = json.loads(details) if isinstance(details, str) else details
            queue.put_nowait(parse_panic_event(event, data))

        with contextlib.suppress(lv.libvirtError):
            ids.append(("any", self.conn.domainEventRegisterAny(self.dom, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                                lifecycle, None)))
        with contextlib.suppress(Exception):
            import libvirt_qemu

            ids.append(("qemu", libvirt_qemu.qemuMonitorEventRegister(self.conn, self.dom, "GUEST_PANICKED",
                                                                     monitor, None, 0)))
        try:
            yield
        finally:
            self._panics = None
            for kind, cb in ids:
                with contextlib.suppress(Exception):
                    if kind == "any":
                        self.conn.domainEventDeregisterAny(cb)
                    else:
                        import libvirt_qemu

                        libvirt_qemu.qemuMonitorEventDeregister(self.conn, cb)

    async def wait_panic(self, timeout: float) -> PanicInfo | None:
        assert self._panics is not None, "wait_panic() outside watch_panics()"
        deadline = time.monotonic() + timeout
        first: PanicInfo | None = None
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                info = await asyncio.wait_for(self._panics.get(), min(0.5, max(0.0, deadline - time.monotonic())))
                if info.bugcheck_code is not None or info.event == "GUEST_PANICKED":
                    return info  # the QEMU event has the details; prefer it
                first = first or info
                deadline = min(deadline, time.monotonic() + 0.5)  # give the monitor event a moment
                continue
            if first is None and (await self.state()).status == "guest-panicked":  # no event loop: poll
                first = PanicInfo("state", None, "libvirt domain state")
                deadline = min(deadline, time.monotonic() + 0.5)
        return first

    async def memory_size(self) -> int:
        info = self._call("read the domain info", self.dom.info)
        return int(info[2]) * 1024

    async def dump_formats(self) -> list[str]:
        try:
            import json

            import libvirt_qemu

            reply = libvirt_qemu.qemuMonitorCommand(self.dom, '{"execute":"query-dump-guest-memory-capability"}', 0)
            return list(json.loads(reply)["return"]["formats"])
        except Exception:  # noqa: BLE001 - not the QEMU driver: let the dump call decide
            return list(DUMP_FORMATS)

    async def dump(self, out: Path, fmt: str, force: bool, progress: ProgressFn) -> DumpResult:
        lv = self.libvirt
        where = self.target.describe()
        before = await self.state()
        formats = await self.dump_formats()
        if fmt not in formats:
            raise WincrashError(f"{where}: this QEMU cannot write format {fmt!r} (it offers: {', '.join(formats)})")
        ram = await self.memory_size()
        out = out.absolute()
        check_destination(out, force)
        check_free_space(out, ram + (1 << 20))
        tmp = out.with_name(f".{out.name}.wincrash-partial-{os.getpid()}")
        flag = getattr(lv, _LIBVIRT_FORMATS[fmt])
        started = time.monotonic()
        job = asyncio.ensure_future(asyncio.to_thread(self.dom.coreDumpWithFormat, str(tmp), flag,
                                                      lv.VIR_DUMP_MEMORY_ONLY))
        ok = False
        try:
            while not job.done():
                with contextlib.suppress(OSError):
                    progress(tmp.stat().st_size, ram)
                await asyncio.wait({job}, timeout=0.2)
            try:
                job.result()
            except lv.libvirtError as exc:
                from wincrash.capture.dumpguest import explain_dump_error

                raise WincrashError(f"{where}: the dump failed: {explain_dump_error(fmt, exc.get_error_message())}"
                                    ) from None
            os.chmod(tmp, 0o600)
            if out.exists() and not force:
                raise WincrashError(f"{out}: already exists (use --force to overwrite)")
            os.replace(tmp, out)
            ok = True
        except BaseException:
            if not job.done():
                with contextlib.suppress(Exception):
                    self.dom.abortJob()
                with contextlib.suppress(BaseException):
                    await asyncio.wait({job}, timeout=30)
            raise
        finally:
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        seconds = time.monotonic() - started
        after = await self.state()
        size = out.stat().st_size
        progress(size, ram)
        # libvirt stops the vCPUs for the whole memory-only dump: the pause is the dump's duration.
        return DumpResult(path=out, format=fmt, size=size, guest_ram=ram, seconds=seconds,
                          paused_seconds=seconds if before.running else None,
                          status_before=before.status, status_after=after.status)
