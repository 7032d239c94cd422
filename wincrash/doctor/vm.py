"""Verdicts on one VM from its gathered facts: pure functions, one per check, each with its fix.

The fixes name both spellings engineers meet: QEMU's command line and libvirt's domain XML.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from wincrash.doctor.facts import HV_INFORMATIVE, HV_REQUIRED, VmFacts
from wincrash.doctor.report import Check, fail, ok, warn
from wincrash.vm.runstate import VCPUS_STOPPED, RunState

HV_SPINLOCKS_OFF = 0xFFFFFFFF  # QEMU's default: no spinlock enlightenment
DUMP_MARGIN = 64 << 20
HV_CPU_FLAGS = "hv_relaxed,hv_vapic,hv_spinlocks=0x1fff,hv_time,hv_crash"
HV_LIBVIRT = ("<features><hyperv><relaxed state='on'/><vapic state='on'/><spinlocks state='on' retries='8191'/>"
              "</hyperv></features>, <clock><timer name='hypervclock' present='yes'/></clock> and "
              "<devices><panic model='hyperv'/></devices>")


def _unknown(facts: VmFacts, fact: str) -> str:
    return facts.unknown.get(fact, "QEMU did not say")


def check_status(facts: VmFacts) -> Check:
    name = "vm.status"
    status = facts.status
    if status is None:
        return warn(name, f"run state unknown ({_unknown(facts, 'status')})", "check the VM with `virsh domstate` "
                    "or the QMP command query-status", status=None)
    if status == RunState.RUNNING:
        return ok(name, "running", status=status)
    if status == RunState.GUEST_PANICKED:
        return warn(name, "the guest has crashed (guest-panicked) and is held stopped",
                    "take the dump now: `wincrash capture VM` (then restart the VM)", status=status)
    if status in VCPUS_STOPPED:
        return warn(name, f"the vCPUs are stopped ({status})",
                    "resume it: QMP `cont` or `virsh resume DOMAIN` (an NMI to a stopped VM is never delivered)",
                    status=status)
    return fail(name, f"the VM is not usable ({status})", "restart the VM (it is shut down or in an error state)",
                status=status)


def check_machine(facts: VmFacts) -> Check:
    name = "vm.machine"
    machine = facts.machine
    if machine is None:
        return warn(name, f"machine type unknown ({_unknown(facts, 'machine')})",
                    "check -machine on the QEMU command line (pc or q35 for Windows)", machine=None)
    short = machine.removesuffix("-machine")
    if not short.startswith(("pc", "q35")):
        return warn(name, f"machine type {short}: Windows guests need a PC machine (pc/i440fx or q35)",
                    "start QEMU with -machine q35 (or pc); libvirt: <type machine='q35'>hvm</type>", machine=short)
    return ok(name, f"machine type {short}", machine=short)


def check_virt_exposed(facts: VmFacts, host_flag: str | None) -> Check:
    """vmx/svm on the guest's vCPU: without it Windows cannot start its hypervisor (Hyper-V role)."""
    name = "vm.cpu-virt"
    on = [f for f in ("vmx", "svm") if facts.cpu_props.get(f) is True]
    known = [f for f in ("vmx", "svm") if f in facts.cpu_props]
    want = host_flag or "vmx"
    fix = (f"add +{want} to -cpu (e.g. -cpu host, or -cpu <model>,+{want}); libvirt: <cpu mode='host-passthrough'/> "
           f"or <feature policy='require' name='{want}'/>; the host needs nested=1 (see host.nested)")
    details = {f: facts.cpu_props.get(f) for f in ("vmx", "svm")}
    if not known:
        return warn(name, f"cannot read vmx/svm of the vCPU ({_unknown(facts, 'cpu')})", fix, **details)
    if not on:
        return fail(name, "the guest's vCPU has neither vmx nor svm: Hyper-V cannot start inside it", fix, **details)
    if host_flag and host_flag not in on:
        return warn(name, f"the guest sees {'/'.join(on)} but the host CPU has {host_flag}: nested KVM needs the "
                    "host's own extension", fix, **details)
    return ok(name, f"the guest's vCPU has {'/'.join(on)}", **details)


def _hv_on(facts: VmFacts, prop: str) -> bool | None:
    if prop not in facts.cpu_props:
        return None
    value = facts.cpu_props[prop]
    if prop == "hv-spinlocks":
        return isinstance(value, int) and value != HV_SPINLOCKS_OFF
    return value is True


def check_enlightenments(facts: VmFacts) -> Check:
    name = "vm.hyperv"
    state = {p: _hv_on(facts, p) for p in HV_REQUIRED}
    details = {"required": state, "hv-spinlocks": facts.cpu_props.get("hv-spinlocks")}
    missing = [p for p, on in state.items() if on is False]
    unknown = [p for p, on in state.items() if on is None]
    if len(unknown) == len(state):
        return warn(name, f"this QEMU shows no Hyper-V enlightenments on the vCPU ({_unknown(facts, 'cpu')})",
                    f"add to -cpu: {HV_CPU_FLAGS}; libvirt: {HV_LIBVIRT}", **details)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"off: {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown: {', '.join(unknown)}")
        on = [p for p, v in state.items() if v]
        found = "; ".join(parts) + (f" (on: {', '.join(on)})" if on else "")
        flags = ",".join(p.replace("-", "_") + ("=0x1fff" if p == "hv-spinlocks" else "") for p in missing + unknown)
        return warn(name, f"Hyper-V enlightenments {found}", f"add to -cpu: {flags}; libvirt: {HV_LIBVIRT}",
                    **details)
    return ok(name, f"Hyper-V enlightenments on: {', '.join(HV_REQUIRED)}", **details)


def check_enlightenments_extra(facts: VmFacts) -> Check:
    """Informative: the enlightenments a Hyper-V root partition uses when present (never a failure)."""
    state = {p: _hv_on(facts, p) for p in HV_INFORMATIVE}
    on = [p for p, v in state.items() if v]
    return ok("vm.hyperv-extra", f"also on: {', '.join(on)}" if on else "no further enlightenments on",
              enlightenments=state)


def _devices_of(facts: VmFacts, *types: str) -> list[str]:
    return [path for path, kind in facts.devices if kind in types]


def check_panic_channel(facts: VmFacts) -> Check:
    """pvpanic or hv-crash: how QEMU learns that Windows bugchecked (capture --crash and nmi --wait need it)."""
    name = "vm.panic"
    pvpanic = _devices_of(facts, "pvpanic", "pvpanic-pci", "pvpanic-isa")
    hv_crash = _hv_on(facts, "hv-crash") is True
    details = {"pvpanic": pvpanic, "hv-crash": hv_crash}
    channels = [f"pvpanic ({', '.join(pvpanic)})"] if pvpanic else []
    channels += ["hv-crash"] if hv_crash else []
    if channels:
        return ok(name, f"panic reported through {' and '.join(channels)}", **details)
    if "devices" in facts.unknown:
        return warn(name, f"cannot list the VM's devices ({facts.unknown['devices']}) and hv-crash is off",
                    "add -device pvpanic (libvirt: <panic model='isa'/>) or hv_crash to -cpu", **details)
    return fail(name, "no panic channel: QEMU will not notice a Windows bugcheck (no pvpanic device, hv-crash off)",
                "add -device pvpanic (libvirt: <devices><panic model='isa'/></devices>) or hv_crash to -cpu "
                "(libvirt: <panic model='hyperv'/>)", **details)


def check_vmcoreinfo(facts: VmFacts) -> Check:
    name = "vm.vmcoreinfo"
    found = _devices_of(facts, "vmcoreinfo")
    if found:
        return ok(name, f"vmcoreinfo device present ({', '.join(found)}): dump --format win-dmp possible "
                  "(with the virtio-win fwcfg driver in the guest)", devices=found)
    return warn(name, "no vmcoreinfo device: QEMU's own win-dmp format is unavailable (ELF dumps + `wincrash "
                "convert` still work)", "add -device vmcoreinfo (libvirt: <features><vmcoreinfo state='on'/>"
                "</features>) and install the virtio-win fwcfg driver in the guest", devices=[])


def check_free_space(facts: VmFacts, dump_dir: Path) -> Check:
    """Free space in ``dump_dir`` for `capture`: about the guest RAM when capture streams MEMORY.DMP from the
    dump (``facts.not_streamed`` is None: full, bitmap and kernel formats), else twice (the ELF, then MEMORY.DMP
    side by side; also what `--keep-elf` needs)."""
    name = "vm.free-space"
    try:
        free = shutil.disk_usage(dump_dir).free
    except OSError as exc:
        return fail(name, f"{dump_dir}: {(exc.strerror or str(exc)).lower()}", "pass an existing folder with "
                    "--dump-dir", dump_dir=str(dump_dir))
    streams = facts.not_streamed is None
    details = {"dump_dir": str(dump_dir.absolute()), "free": free, "guest_ram": facts.ram, "streams": streams}
    mib = 1 << 20
    times = "the guest's RAM" if streams else "twice the guest's RAM"
    if facts.ram is None:
        return warn(name, f"{free / mib:,.0f} MiB free in {dump_dir}, guest RAM unknown "
                    f"({_unknown(facts, 'ram')})", f"make sure the folder has {times} free", **details)
    needed = (1 if streams else 2) * facts.ram + DUMP_MARGIN
    where = f"{free / mib:,.0f} MiB free in {dump_dir.absolute()} for {facts.ram / mib:,.0f} MiB of guest RAM"
    fix = (f"free {needed / mib:,.0f} MiB there, or dump elsewhere: `wincrash capture VM -o /big/disk/MEMORY.DMP` "
           "(check that place with doctor --dump-dir)")
    if free < facts.ram + DUMP_MARGIN:
        return fail(name, f"{where}: not even the memory dump fits", fix, **details)
    if free < needed:
        return warn(name, f"{where}: the ELF fits but not the ELF and MEMORY.DMP together (capture cannot stream "
                    f"here: {facts.not_streamed})", fix, **details)
    if streams:
        return ok(name, f"{where}: capture streams MEMORY.DMP (no ELF); --keep-elf needs "
                  f"{(2 * facts.ram + DUMP_MARGIN) / mib:,.0f} MiB", **details)
    return ok(name, where, **details)


def vm_checks(facts: VmFacts, host_flag: str | None, dump_dir: Path) -> list[Check]:
    return [check_status(facts), check_machine(facts), check_virt_exposed(facts, host_flag),
            check_enlightenments(facts), check_enlightenments_extra(facts), check_panic_channel(facts),
            check_vmcoreinfo(facts), check_free_space(facts, dump_dir)]
