"""Gather what a running QEMU says about itself (QMP), and where its process is on this host.

Only I/O here; the verdicts are in vm.py. A QEMU too old for a command (``CommandRefusedError``)
leaves that fact None (the check then says "unknown"); any other ``VmError`` (a dropped connection,
a libvirt domain without QMP passthrough) propagates: doctor could not run.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wincrash.vm.connection import VmConnection
from wincrash.vm.errors import CommandRefusedError
from wincrash.vm.runstate import RunState

# Hyper-V enlightenments as QEMU 4.1+ spells the vCPU properties (older QEMU: hv_relaxed ...).
HV_REQUIRED = ("hv-relaxed", "hv-vapic", "hv-spinlocks", "hv-time", "hv-crash")
HV_INFORMATIVE = ("hv-vpindex", "hv-synic", "hv-stimer", "hv-reset", "hv-frequencies", "hv-runtime",
                  "hv-tlbflush", "hv-ipi")
CPU_FLAGS = ("vmx", "svm")


@dataclass(frozen=True)
class QemuProcess:
    """The QEMU process on this host: its pid, executable (None: unreadable), argv and working directory."""

    pid: int
    exe: str | None
    argv: list[str]
    cwd: Path | None


@dataclass
class VmFacts:
    """What doctor learned about one VM; None (or empty) where QEMU did not say, with the reason in ``unknown``.

    ``ram`` in bytes; ``devices`` as (QOM path, type) of the -device devices; ``process`` the QEMU process
    found on this host, if any. Filled in by ``gather`` (mutable while it runs).
    """

    version: str | None = None
    status: RunState | None = None
    machine: str | None = None
    ram: int | None = None
    cpu_path: str | None = None
    cpu_props: dict[str, Any] = field(default_factory=dict)  # vmx/svm/hv-* that this QEMU has
    devices: list[tuple[str, str]] = field(default_factory=list)  # (QOM path, type) of -device devices
    firmware_name: str | None = None  # -bios name (qom-get /machine firmware)
    pflash: str | None = None  # the file behind pflash0 (UEFI code), if any
    thread_ids: list[int] = field(default_factory=list)
    process: QemuProcess | None = None
    # Why `capture` could not stream MEMORY.DMP from this connection (VmConnection.stream_unsupported);
    # None: it streams (full and bitmap formats), so the ELF is never written.
    not_streamed: str | None = "not asked"
    unknown: dict[str, str] = field(default_factory=dict)  # fact -> why it is unknown


async def _try(vm: VmConnection, facts: VmFacts, fact: str, command: str, **arguments: Any) -> Any:
    try:
        return await vm.qmp(command, arguments or None)
    except CommandRefusedError as exc:
        facts.unknown[fact] = f"{command}: {exc.desc}"
        return None


async def gather(vm: VmConnection, proc_root: Path = Path("/proc")) -> VmFacts:
    """Ask ``vm`` (QMP, or libvirt's passthrough) for everything vm.py judges; find its process under ``proc_root``.

    :raises VmError: anything but a refused command (QEMU gone, no QMP passthrough, ...).
    """
    facts = VmFacts(not_streamed=vm.stream_unsupported())
    version = await _try(vm, facts, "version", "query-version")
    if version:
        q = version.get("qemu", {})
        facts.version = f"{q.get('major')}.{q.get('minor')}.{q.get('micro')}"
    status = await _try(vm, facts, "status", "query-status")
    if status:
        facts.status = RunState.from_name(status.get("status"))
    facts.machine = await _try(vm, facts, "machine", "qom-get", path="/machine", property="type")
    try:
        facts.ram = await vm.memory_size()
    except CommandRefusedError as exc:
        facts.unknown["ram"] = f"{exc.command}: {exc.desc}"
    cpus = await _try(vm, facts, "cpu", "query-cpus-fast") or []
    facts.thread_ids = [int(c["thread-id"]) for c in cpus if "thread-id" in c]
    if cpus:
        facts.cpu_path = cpus[0].get("qom-path")
    if facts.cpu_path:
        await _cpu_props(vm, facts, facts.cpu_path)
    for container in ("/machine/peripheral", "/machine/peripheral-anon"):
        for child in await _try(vm, facts, "devices", "qom-list", path=container) or []:
            kind = str(child.get("type", ""))
            if kind.startswith("child<"):
                facts.devices.append((f"{container}/{child['name']}", kind[6:-1]))
    facts.firmware_name = await _try(vm, facts, "firmware", "qom-get", path="/machine", property="firmware")
    for dev in await _try(vm, facts, "pflash", "query-block") or []:
        if dev.get("device") == "pflash0" or str(dev.get("qdev", "")).endswith("system.flash0"):
            facts.pflash = (dev.get("inserted") or {}).get("file")
    facts.process = find_process(facts.thread_ids, proc_root)
    return facts


async def _cpu_props(vm: VmConnection, facts: VmFacts, path: str) -> None:
    names = {p["name"] for p in await _try(vm, facts, "cpu", "qom-list", path=path) or []}
    for prop in (*CPU_FLAGS, *HV_REQUIRED, *HV_INFORMATIVE):
        for spelling in (prop, prop.replace("-", "_")):
            if spelling in names:
                facts.cpu_props[prop] = await _try(vm, facts, prop, "qom-get", path=path, property=spelling)
                break


def find_process(thread_ids: list[int], proc_root: Path = Path("/proc")) -> QemuProcess | None:
    """The QEMU process on this host, via a vCPU thread id (query-cpus-fast) -> /proc/TID/status Tgid.

    Works whatever the monitor transport (our socket, TCP, libvirt's fd-passed socket). When QEMU runs
    on another host (or in another PID namespace) the thread is not ours: we accept the process only if
    it is a QEMU whose every reported vCPU thread belongs to it.
    """
    if not thread_ids:
        return None
    tgid = None
    for tid in thread_ids:
        try:
            status = (proc_root / str(tid) / "status").read_text()
        except OSError:
            return None
        this = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Tgid:")), None)
        if this is None or (tgid is not None and this != tgid):
            return None
        tgid = this
    assert tgid is not None
    base = proc_root / str(tgid)
    try:
        argv = [a.decode(errors="replace") for a in (base / "cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return None
    exe = cwd = None
    with contextlib.suppress(OSError):
        exe = os.readlink(base / "exe")
    with contextlib.suppress(OSError):
        cwd = Path(os.readlink(base / "cwd"))
    program = os.path.basename(exe or (argv[0] if argv else ""))
    if not program.startswith("qemu"):
        return None
    return QemuProcess(pid=tgid, exe=exe, argv=argv, cwd=cwd)


def data_dirs_from_argv(argv: list[str]) -> list[str]:
    """The -L folders on a QEMU command line, in order."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-L"]
