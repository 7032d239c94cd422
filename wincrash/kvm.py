"""Can KVM run a full guest here? Asked before starting the libguestfs appliance, and by `doctor`.

/dev/kvm can exist and open while guests still cannot run: on a nested host whose hypervisor
hides VT-x/AMD-V (no vmx/svm in /proc/cpuinfo; e.g. a paravirtual kvm_pvm module), QEMU starts
and the appliance then hangs for many minutes. So KVM counts as usable only when /dev/kvm opens
read-write, KVM_CREATE_VM and KVM_CREATE_VCPU succeed (linux/kvm.h ioctls 0xAE01, 0xAE41) and the
CPU flags show vmx or svm.
"""

from __future__ import annotations

import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path

KVM_CREATE_VM = 0xAE01  # _IO(KVMIO, 0x01)
KVM_CREATE_VCPU = 0xAE41  # _IO(KVMIO, 0x41)


@dataclass(frozen=True)
class KvmStatus:
    """``usable``: full guests can run under KVM; ``reason``: why not (one clause), or what was seen."""

    usable: bool
    reason: str


def cpu_flags(proc: Path = Path("/proc")) -> set[str]:
    """The first CPU's flags in ``proc``/cpuinfo (empty when unreadable)."""
    try:
        text = (proc / "cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def kvm_status(dev: Path = Path("/dev"), proc: Path = Path("/proc")) -> KvmStatus:
    """Whether KVM can run a full guest (see the module text); never raises."""
    path = dev / "kvm"
    if not path.exists():
        return KvmStatus(False, f"{path} is missing")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmStatus(False, f"{path} cannot be opened ({(exc.strerror or str(exc)).lower()})")
    vm = vcpu = -1
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):  # a stand-in (doctor --host-root): nothing to ask
            pass
        else:
            vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
            vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    except OSError as exc:
        step = "KVM_CREATE_VM" if vm < 0 else "KVM_CREATE_VCPU"
        return KvmStatus(False, f"{path} opens but {step} fails ({(exc.strerror or str(exc)).lower()})")
    finally:
        for handle in (vcpu, vm, fd):
            if handle >= 0:
                os.close(handle)
    if not cpu_flags(proc) & {"vmx", "svm"}:
        return KvmStatus(False, f"{path} opens and creates a vCPU, but the CPU shows neither vmx nor svm "
                         f"({proc / 'cpuinfo'}): a nested or paravirtual KVM that may hang full guests")
    return KvmStatus(True, f"{path} creates VMs and vCPUs and the CPU has hardware virtualization")
