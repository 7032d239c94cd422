"""Host checks: KVM, nested virtualization, CPU virtualization extensions, kernel and QEMU versions.

Everything is read below a configurable ``root`` (normally "/") so that tests can build fake /sys,
/proc and /dev trees for every case (nested Y/N/1/0/missing, AMD hosts, old kernels) that this
machine cannot show for real.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from wincrash.doctor.report import Check, fail, ok, warn
from wincrash.doctor.versions import parse_version, show

MIN_KERNEL = (4, 10)  # first kernel whose nested VMX runs Hyper-V guests reliably
MIN_QEMU = (2, 7)  # hv-* enlightenments Windows' Hyper-V role needs, and vmcoreinfo/pvpanic plumbing
QEMU_BINARY = "qemu-system-x86_64"

KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
VENDOR_MODULE = {"vmx": "kvm_intel", "svm": "kvm_amd"}


@dataclass(frozen=True)
class HostRoot:
    """Where /sys, /proc and /dev are; ``HostRoot(Path("/"))`` is the real host."""

    root: Path = Path("/")

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def proc(self) -> Path:
        return self.root / "proc"

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    @property
    def is_real(self) -> bool:
        return self.root.resolve() == Path("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def cpu_virt_flag(host: HostRoot) -> str | None:
    """'vmx' (Intel VT-x), 'svm' (AMD-V) or None, from the first CPU's flags in /proc/cpuinfo."""
    text = _read(host.proc / "cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            for flag in ("vmx", "svm"):
                if flag in flags:
                    return flag
            return None
    return None


def cpu_vendor(host: HostRoot) -> str | None:
    text = _read(host.proc / "cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return None


def check_kvm(host: HostRoot) -> Check:
    name = "host.kvm"
    path = host.dev / "kvm"
    if not path.exists():
        return fail(name, f"{path} is missing: KVM is not available",
                    "load KVM: `modprobe kvm_intel` (Intel) or `modprobe kvm_amd` (AMD); if that fails, enable "
                    "VT-x/AMD-V in the host's firmware setup", path=str(path))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        return fail(name, f"{path} exists but this user may not open it",
                    "`usermod -aG kvm $USER` and log in again (or run as root)", path=str(path))
    except OSError as exc:
        return fail(name, f"{path} cannot be opened: {(exc.strerror or str(exc)).lower()}",
                    "reload KVM: `modprobe -r kvm_intel && modprobe kvm_intel` (kvm_amd on AMD)", path=str(path))
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            return ok(name, f"{path} is present and opens read-write", path=str(path))
        api = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return fail(name, f"{path} opens but does not answer KVM_GET_API_VERSION "
                    f"({(exc.strerror or str(exc)).lower()})", "reload KVM: `modprobe -r kvm_intel && modprobe "
                    "kvm_intel` (kvm_amd on AMD)", path=str(path))
    finally:
        os.close(fd)
    return ok(name, f"{path} is present, opens read-write and speaks KVM API {api}", path=str(path), api=api)


def check_kvm_runs(host: HostRoot) -> Check:
    """Can KVM run a full guest (wincrash.kvm: KVM_CREATE_VM, KVM_CREATE_VCPU, vmx/svm)? A /dev/kvm that
    answers its API but cannot (nested host without VT-x/AMD-V exposed, kvm_pvm) hangs QEMU and libguestfs."""
    from wincrash.kvm import kvm_status  # noqa: PLC0415 - the probe the libguestfs appliance uses too

    name = "host.kvm-runs-guests"
    path = host.dev / "kvm"
    if not path.exists():
        return fail(name, f"{path} is missing: guests run under TCG only (slow)",
                    "see host.kvm", usable=False)
    status = kvm_status(host.dev, host.proc)
    if not status.usable:
        return fail(name, f"KVM cannot run guests here: {status.reason}",
                    "expose VT-x/AMD-V to this host (nested virtualization in its hypervisor); until then QEMU "
                    "needs -accel tcg, and grab-pagefile/prepare run libguestfs under TCG on their own "
                    "(LIBGUESTFS_BACKEND_SETTINGS=force_tcg)", usable=False)
    return ok(name, status.reason, usable=True)


def check_cpu_virt(host: HostRoot) -> Check:
    name = "host.cpu-virt"
    flag = cpu_virt_flag(host)
    vendor = cpu_vendor(host)
    if flag is None:
        return fail(name, f"the host CPU ({vendor or 'vendor unknown'}) offers neither vmx nor svm in "
                    f"{host.proc / 'cpuinfo'}",
                    "enable VT-x (Intel) or AMD-V/SVM (AMD) in the host's firmware setup; if this host is itself a "
                    "VM, turn on nested virtualization in its hypervisor", vendor=vendor, flag=None)
    label = "Intel VT-x" if flag == "vmx" else "AMD-V"
    return ok(name, f"{vendor or 'the CPU'} offers {flag} ({label})", vendor=vendor, flag=flag)


def check_nested(host: HostRoot) -> Check:
    """kvm_intel/kvm_amd ``nested`` parameter: Y or 1 means L1 guests (Hyper-V) may run their own guests."""
    name = "host.nested"
    flag = cpu_virt_flag(host)
    modules = [m for m in ("kvm_intel", "kvm_amd") if (host.sys / "module" / m).is_dir()]
    vendor_flag = flag or ("svm" if cpu_vendor(host) in ("AuthenticAMD", "HygonGenuine") else "vmx")
    wanted = VENDOR_MODULE[vendor_flag]
    if not modules:
        others = sorted(p.name for p in (host.sys / "module").glob("kvm*")) if (host.sys / "module").is_dir() else []
        seen = f" (loaded: {', '.join(others)})" if others else ""
        return fail(name, f"neither kvm_intel nor kvm_amd is loaded{seen}",
                    f"`modprobe {wanted} nested=1`; to keep it: `echo 'options {wanted} nested=1' > "
                    "/etc/modprobe.d/kvm.conf`", module=None, value=None)
    module = modules[0]
    param = host.sys / "module" / module / "parameters" / "nested"
    value = _read(param)
    fix = (f"stop all VMs, then `modprobe -r {module} && modprobe {module} nested=1`; to keep it across "
           f"reboots: `echo 'options {module} nested=1' > /etc/modprobe.d/kvm.conf` (or boot with "
           f"{module.replace('_', '-')}.nested=1)")
    if value is None:
        return fail(name, f"{param} is missing: this {module} has no nested support",
                    f"upgrade the host kernel (>= {show(MIN_KERNEL)}), then {fix}", module=module, value=None)
    value = value.strip()
    if value in ("Y", "1"):
        return ok(name, f"{module} nested={value}", module=module, value=value)
    if value in ("N", "0"):
        return fail(name, f"{module} nested={value}: guests cannot run Hyper-V", fix, module=module, value=value)
    return warn(name, f"{module} nested={value!r}: an unexpected value", fix, module=module, value=value)


def kernel_release(host: HostRoot) -> str | None:
    text = _read(host.proc / "sys" / "kernel" / "osrelease")
    if text is not None:
        return text.strip()
    return os.uname().release if host.is_real else None


def check_kernel(host: HostRoot) -> Check:
    name = "host.kernel"
    release = kernel_release(host)
    version = parse_version(release or "")
    fix = f"upgrade the host kernel to {show(MIN_KERNEL)} or later (nested VMX for Hyper-V guests)"
    if release is None or version is None:
        return warn(name, f"kernel release unknown ({release!r})", fix, release=release)
    if version[:2] < MIN_KERNEL:
        return fail(name, f"kernel {release} is older than {show(MIN_KERNEL)}", fix, release=release)
    return ok(name, f"kernel {release} (>= {show(MIN_KERNEL)})", release=release)


def qemu_binary_version(binary: str = QEMU_BINARY) -> tuple[str | None, str]:
    """(version text or None, how we got it) from ``qemu-system-x86_64 --version``."""
    path = shutil.which(binary)
    if path is None:
        return None, f"{binary} is not on PATH"
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{path} --version failed: {exc}"
    line = (proc.stdout or proc.stderr).strip().splitlines()
    return (line[0] if line else None), f"{path} --version"


def check_qemu_version(version_text: str | None, source: str) -> Check:
    """QEMU >= 2.7; ``source`` says where the number came from (the VM's query-version, or the binary)."""
    name = "host.qemu"
    fix = f"install QEMU {show(MIN_QEMU)} or later (Debian/Ubuntu: `apt install qemu-system-x86`)"
    version = parse_version(version_text or "")
    if version is None:
        return warn(name, f"QEMU version unknown ({source})", fix, version=None, source=source)
    if version[:2] < MIN_QEMU:
        return fail(name, f"QEMU {show(version)} is older than {show(MIN_QEMU)} ({source})", fix,
                    version=show(version), source=source)
    return ok(name, f"QEMU {show(version)} (>= {show(MIN_QEMU)}, from {source})", version=show(version),
              source=source)


def host_checks(host: HostRoot) -> list[Check]:
    """The checks that need nothing but the host (QEMU version and firmware are added by the caller)."""
    return [check_kvm(host), check_kvm_runs(host), check_cpu_virt(host), check_nested(host), check_kernel(host)]
