"""``VmConnection`` for libvirt domains (libvirt owns their QMP monitor, so we go through its API).

NMI: virDomainInjectNMI; keys: virDomainSendKey; dump: virDomainCoreDumpWithFormat with
VIR_DUMP_MEMORY_ONLY (libvirt opens the file and hands QEMU the descriptor: this is QEMU's
dump-guest-memory, paging=false); QMP commands: libvirt-qemu's monitor passthrough
(virDomainQemuMonitorCommand); panics: lifecycle events (crashed / paused-panicked) plus, on the
QEMU driver, the raw GUEST_PANICKED monitor event, which carries Hyper-V's bugcheck code.
libvirt's callbacks run on the asyncio loop through libvirtaio.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from wincrash.errors import WincrashError
from wincrash.vm.connection import VmConnection
from wincrash.vm.errors import CommandRefusedError, DumpFailedError, NotQmpError, VmError, VmUnreachableError
from wincrash.vm.guest_memory import DUMP_FORMATS, ProgressFn, explain_dump_error
from wincrash.vm.panic import PanicInfo, parse_panic_event
from wincrash.vm.runstate import RunState, VmStatus
from wincrash.vm.target import Target

KEY_RIGHTCTRL, KEY_SCROLLLOCK = 97, 70  # linux keycodes (input-event-codes.h)
KEY_HOLD_MS = 100
KEY_GAP_SECONDS = 0.2
ABORT_WAIT_SECONDS = 30  # how long a cancelled dump may take to stop
PEEK_CHUNK = 64 << 10  # bytes per virDomainMemoryPeek (REMOTE_DOMAIN_MEMORY_PEEK_BUFFER_MAX is 64 KiB in older libvirt)

_LIBVIRT_FORMATS = {"elf": "VIR_DOMAIN_CORE_DUMP_FORMAT_RAW", "kdump-zlib": "VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB",
                    "win-dmp": "VIR_DOMAIN_CORE_DUMP_FORMAT_WIN_DMP"}


def _import_libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise VmError("libvirt domain names need the libvirt Python bindings "
                      "(Debian: apt install python3-libvirt; PyPI: libvirt-python)") from None
    return libvirt


def _register_event_loop() -> Any:
    """Dispatch libvirt's callbacks on the running asyncio loop (libvirtaio); None when that cannot be done.

    Without it no domain event arrives and ``wait_panic`` polls the domain state instead.
    """
    try:
        import libvirtaio

        return libvirtaio.virEventRegisterAsyncIOImpl(loop=asyncio.get_running_loop())
    except ImportError:  # bindings older than 5.x ship no libvirtaio
        return None
    except RuntimeError:  # "Event loop is already registered": a second connection in this process
        return None


def status_of(libvirt: Any, state: int, reason: int) -> VmStatus:
    """libvirt's (state, reason) of virDomainGetState, named as QEMU's query-status would name it.

    BLOCKED (a vCPU waiting on a resource) is QEMU's ``running``; CRASHED and PAUSED/PAUSED_CRASHED are
    ``guest-panicked``; PMSUSPENDED is ``suspended``; SHUTOFF (no QEMU process) is libvirt's own ``shutoff``.
    """
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return VmStatus(RunState.RUNNING, True)
    if state == libvirt.VIR_DOMAIN_CRASHED or (
            state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_CRASHED):
        return VmStatus(RunState.GUEST_PANICKED, False)
    names = {libvirt.VIR_DOMAIN_PAUSED: RunState.PAUSED, libvirt.VIR_DOMAIN_SHUTOFF: RunState.SHUTOFF,
             libvirt.VIR_DOMAIN_SHUTDOWN: RunState.SHUTDOWN, libvirt.VIR_DOMAIN_PMSUSPENDED: RunState.SUSPENDED}
    return VmStatus(names.get(state, RunState.UNKNOWN), False)


class LibvirtConnection(VmConnection):
    """A libvirt domain, through one libvirt connection (``target.uri``)."""

    def __init__(self, target: Target, libvirt: Any, conn: Any, dom: Any, aio: Any) -> None:
        self.target = target
        self.libvirt, self.conn, self.dom = libvirt, conn, dom
        self._panics: asyncio.Queue[PanicInfo] | None = None
        self._aio = aio

    @classmethod
    async def open(cls, target: Target) -> LibvirtConnection:
        """Connect to libvirt at ``target.uri`` and look the domain up.

        :raises VmError: no libvirt Python bindings.
        :raises VmUnreachableError: libvirt refuses the connection, or has no such domain.
        """
        libvirt = _import_libvirt()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # we report errors ourselves, once
        aio = _register_event_loop()
        try:
            conn = await asyncio.to_thread(libvirt.open, target.uri)
        except libvirt.libvirtError as exc:
            raise VmUnreachableError(f"cannot connect to libvirt at {target.uri}: {exc.get_error_message()}"
                                     ) from None
        try:
            dom = conn.lookupByName(target.domain)
        except libvirt.libvirtError as exc:
            conn.close()
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise VmUnreachableError(f"no libvirt domain named {target.domain!r} at {target.uri} (see "
                                         f"`virsh -c {target.uri} list --all`; a socket path needs a '/')") from None
            raise VmUnreachableError(f"{target.describe()}: {exc.get_error_message()}") from None
        return cls(target, libvirt, conn, dom, aio)

    async def close(self) -> None:
        """Close the connection while the loop still runs, so libvirtaio can drop its handles cleanly."""
        self.dom = None
        with contextlib.suppress(self.libvirt.libvirtError):  # a dead libvirtd: nothing left to close
            self.conn.close()
        self.conn = None
        gc.collect()  # the binding frees its handles (and libvirtaio's callbacks) when the objects go
        if self._aio is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._aio.drain(), 5)
        await asyncio.sleep(0)

    def _call(self, doing: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.libvirt.libvirtError as exc:
            message = exc.get_error_message()
            raise CommandRefusedError(f"{self.target.describe()}: cannot {doing}: {message}", doing, "", message
                                      ) from None

    async def status(self) -> VmStatus:
        state, reason = self._call("read the domain state", self.dom.state)
        return status_of(self.libvirt, state, reason)

    async def qmp(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        try:
            import libvirt_qemu
        except ImportError:
            raise NotQmpError("QMP commands to libvirt domains need libvirt-qemu's monitor passthrough "
                              "(Debian: apt install python3-libvirt)") from None
        request = json.dumps({"execute": command, **({"arguments": dict(arguments)} if arguments else {})})
        try:
            reply = await asyncio.to_thread(libvirt_qemu.qemuMonitorCommand, self.dom, request, 0)
        except self.libvirt.libvirtError as exc:
            raise NotQmpError(f"{self.target.describe()}: libvirt cannot pass QMP commands to this domain "
                              f"({exc.get_error_message()}); that needs a running QEMU/KVM domain") from None
        data = json.loads(reply)
        if "error" in data:
            desc = data["error"].get("desc", "")
            raise CommandRefusedError(f"QEMU refused {command}: {desc}", command, data["error"].get("class", ""),
                                      desc)
        return data.get("return")

    async def inject_nmi(self) -> None:
        self._call("inject an NMI", self.dom.injectNMI, 0)

    async def send_crash_keys(self) -> None:
        for _ in range(2):
            self._call("send keys", self.dom.sendKey, self.libvirt.VIR_KEYCODE_SET_LINUX, KEY_HOLD_MS,
                       [KEY_RIGHTCTRL, KEY_SCROLLLOCK], 2, 0)
            await asyncio.sleep(KEY_GAP_SECONDS)

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
            data = json.loads(details) if isinstance(details, str) else details
            queue.put_nowait(parse_panic_event(event, data))

        # Either registration may be unsupported (another driver, no event loop): wait_panic then polls the state.
        with contextlib.suppress(lv.libvirtError):
            ids.append(("any", self.conn.domainEventRegisterAny(self.dom, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                                lifecycle, None)))
        libvirt_qemu = None
        with contextlib.suppress(ImportError, lv.libvirtError):
            import libvirt_qemu

            ids.append(("qemu", libvirt_qemu.qemuMonitorEventRegister(self.conn, self.dom, "GUEST_PANICKED",
                                                                     monitor, None, 0)))
        try:
            yield
        finally:
            self._panics = None
            for kind, cb in ids:
                with contextlib.suppress(lv.libvirtError):  # the connection or domain is already gone
                    if kind == "any":
                        self.conn.domainEventDeregisterAny(cb)
                    elif libvirt_qemu is not None:
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
            if first is None and (await self.status()).state is RunState.GUEST_PANICKED:  # no events: poll
                first = PanicInfo("state", None, "libvirt domain state")
                deadline = min(deadline, time.monotonic() + 0.5)
        return first

    async def memory_size(self) -> int:
        """Bytes of guest RAM: QEMU's query-memory-size-summary when libvirt passes QMP, else virDomainGetInfo.

        virDomainGetInfo's memory (KiB, the balloon's current size) is the fallback for drivers without
        QMP passthrough (e.g. libvirt's test driver).
        """
        try:
            return await super().memory_size()
        except (NotQmpError, CommandRefusedError):
            info = self._call("read the domain info", self.dom.info)
            return int(info[2]) * 1024

    def stream_unsupported(self) -> str | None:
        return None  # libvirt's memory-only dump into a FIFO we read (vm/libvirt_stream.py)

    async def stream_dump(self, sink: Any, progress: ProgressFn) -> tuple[int, float | None]:
        """libvirt's memory-only dump (QEMU's ELF, paging=false) into ``sink`` through a FIFO
        (vm/libvirt_stream.py says why not qemuMonitorCommandWithFiles)."""
        from wincrash.vm.libvirt_stream import stream_libvirt_dump

        return await stream_libvirt_dump(self, sink, await self.memory_size(), progress)

    async def read_physical(self, paddr: int, size: int) -> bytes:
        """virDomainMemoryPeek(VIR_MEMORY_PHYSICAL), PEEK_CHUNK bytes per call (libvirt's RPC limit)."""
        out = bytearray()
        while len(out) < size:
            n = min(PEEK_CHUNK, size - len(out))
            out += await asyncio.to_thread(self._call, "read guest memory", self.dom.memoryPeek, paddr + len(out), n,
                                           self.libvirt.VIR_MEMORY_PHYSICAL)
        return bytes(out)

    async def dump_formats(self) -> list[str]:
        try:
            caps = await self.qmp("query-dump-guest-memory-capability")
        except (NotQmpError, CommandRefusedError):  # not the QEMU driver: let the dump call decide
            return list(DUMP_FORMATS)
        return list(caps.get("formats", []))

    async def _write_dump(self, out: Path, fmt: str, force: bool, ram: int, before: VmStatus,
                          progress: ProgressFn) -> tuple[int, float | None]:
        lv = self.libvirt
        tmp = out.with_name(f".{out.name}.wincrash-partial-{os.getpid()}")
        started = time.monotonic()
        job = asyncio.ensure_future(asyncio.to_thread(self.dom.coreDumpWithFormat, str(tmp),
                                                      getattr(lv, _LIBVIRT_FORMATS[fmt]), lv.VIR_DUMP_MEMORY_ONLY))
        ok = False
        try:
            while not job.done():
                with contextlib.suppress(OSError):  # not created yet: progress stays where it was
                    progress(tmp.stat().st_size, ram)
                await asyncio.wait({job}, timeout=0.2)
            try:
                job.result()
            except lv.libvirtError as exc:
                raise DumpFailedError(f"{self.target.describe()}: the dump failed: "
                                      f"{explain_dump_error(fmt, exc.get_error_message())}") from None
            os.chmod(tmp, 0o600)
            if out.exists() and not force:
                raise WincrashError(f"{out}: already exists (use --force to overwrite)")
            os.replace(tmp, out)
            ok = True
        except BaseException:
            if not job.done():
                with contextlib.suppress(lv.libvirtError):  # the job may have ended on its own meanwhile
                    self.dom.abortJob()
                # Best effort while unwinding: a second Ctrl-C must not replace the error being raised.
                with contextlib.suppress(BaseException):
                    await asyncio.wait({job}, timeout=ABORT_WAIT_SECONDS)
            raise
        finally:
            if not ok:
                with contextlib.suppress(OSError):  # never created, or not ours: the error being raised matters more
                    os.unlink(tmp)
        seconds = time.monotonic() - started
        size = out.stat().st_size
        progress(size, ram)
        # libvirt stops the vCPUs for the whole memory-only dump: the pause is the dump's duration.
        return size, seconds if before.running else None
