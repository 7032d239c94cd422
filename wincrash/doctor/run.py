"""`wincrash doctor [VM]`: gather host facts (and the VM's, when one is given), then judge them."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from wincrash.doctor import firmware as fw
from wincrash.doctor.facts import VmFacts, data_dirs_from_argv, gather
from wincrash.doctor.host import HostRoot, check_qemu_version, cpu_virt_flag, host_checks, qemu_binary_version
from wincrash.doctor.report import Check, DoctorReport
from wincrash.doctor.vm import vm_checks
from wincrash.vm.errors import VmNotRunningError
from wincrash.vm.opener import open_vm
from wincrash.vm.runstate import RunState
from wincrash.vm.target import Target


def _firmware_check(facts: VmFacts | None, local: bool) -> Check:
    """Find the firmware file the VM booted (or QEMU's default when no VM is given) and judge it."""
    if facts is None:
        dirs = fw.qemu_data_dirs(None)
        if not dirs:
            return fw.check_firmware(None, None, None, "no VM given and qemu-system-x86_64 is not installed")
        path = fw.locate("bios-256k.bin", dirs)
        return fw.check_firmware("default -bios", "bios-256k.bin", path,
                                 "no VM given, and QEMU's default bios-256k.bin is not in its data directories")
    if facts.pflash:
        source, name = "pflash0", facts.pflash
    elif facts.firmware_name:
        source, name = "-bios", facts.firmware_name
    else:
        return fw.check_firmware(None, None, None, f"QEMU did not name its firmware "
                                 f"({facts.unknown.get('firmware', 'empty /machine firmware property')})")
    if not local:
        return fw.check_firmware(source, name, None, f"{name} is on the VM's host, and that QEMU process is not "
                                 "visible from here")
    proc = facts.process
    search: list[Path] = []
    if proc is not None:
        search += [(proc.cwd / d) if proc.cwd else Path(d) for d in data_dirs_from_argv(proc.argv)]
        if proc.cwd is not None:
            search.append(proc.cwd)
    search += fw.qemu_data_dirs(proc.exe if proc else None)
    if proc is not None and proc.cwd is not None and not Path(name).is_absolute():
        name_path = proc.cwd / name
        if name_path.is_file():
            return fw.check_firmware(source, name, name_path, None)
    return fw.check_firmware(source, name, fw.locate(name, search),
                             f"{name} not found in QEMU's data directories ({', '.join(map(str, search))})")


def process_matches(argv: list[str], target: Target) -> bool:
    """Does this QEMU command line belong to the VM we reached? (its socket, its TCP port, its libvirt name)"""
    line = " ".join(argv)
    if target.kind == "unix":
        assert target.path is not None
        return target.path.name in line
    if target.kind == "tcp":
        return re.search(rf":{target.port}(?!\d)", line) is not None
    name = f"guest={(target.domain or '').replace(',', ',,')}"  # libvirt: -name guest=NAME,debug-threads=on
    return any(arg == name or arg.startswith(name + ",") for arg in argv)


async def _vm_part(vm: str, connect: str | None) -> tuple[dict[str, object], VmFacts, bool]:
    async with open_vm(vm, connect) as connection:
        target = connection.target
        status = await connection.status()
        if status.state is RunState.SHUTOFF:  # a defined libvirt domain with no QEMU: nothing to ask
            raise VmNotRunningError(f"{target.describe()}: the domain is {status.state}: start it "
                                    f"(`virsh -c {target.uri} start {target.domain}`) and run doctor again",
                                    status.state)
        facts = await gather(connection)
        if facts.process is not None and not process_matches(facts.process.argv, target):
            facts.process = None  # a local QEMU that happens to own those thread ids, not the one we talk to
        # A UNIX socket is on this host; otherwise trust only a QEMU process we could see (facts.find_process).
        local = target.kind == "unix" or facts.process is not None
        return target.to_dict(), facts, local


def run_doctor(vm: str | None, connect: str | None = None, dump_dir: Path | None = None,
               host_root: Path | None = None) -> DoctorReport:
    """`wincrash doctor [VM]`: host checks (files under ``host_root``, default /), and the VM's when given.

    ``dump_dir`` is where dumps will go (free-space check; default the current folder).

    :raises VmError: the VM cannot be reached or asked (doctor could not run: exit 2); a shut-off domain.
    """
    host = HostRoot(host_root or Path("/"))
    checks = host_checks(host)
    target: dict[str, object] | None = None
    facts: VmFacts | None = None
    local = True
    if vm is not None:
        target, facts, local = asyncio.run(_vm_part(vm, connect))
    if facts is not None and facts.version is not None:
        checks.append(check_qemu_version(facts.version, "the VM's query-version"))
    else:
        text, source = qemu_binary_version()
        checks.append(check_qemu_version(text, source))
    checks.append(_firmware_check(facts, local))
    if facts is not None:
        checks += vm_checks(facts, cpu_virt_flag(host), dump_dir or Path("."))
    return DoctorReport(vm=target, checks=checks)
