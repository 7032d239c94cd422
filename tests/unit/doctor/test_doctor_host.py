"""Host checks against fake /sys, /proc and /dev trees (every case this machine cannot show for real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from doctor_helpers import FakeHost

from wincrash.doctor import firmware as fw
from wincrash.doctor.host import (
    HostRoot,
    check_cpu_virt,
    check_kernel,
    check_kvm,
    check_nested,
    check_qemu_version,
    kernel_release,
)


def _host(fake: FakeHost) -> HostRoot:
    return HostRoot(fake.root)


@pytest.mark.parametrize(("value", "status"), [("Y", "ok"), ("1", "ok"), ("N", "fail"), ("0", "fail"),
                                               ("maybe", "warn")])
def test_nested_values_intel(fake_host: FakeHost, value: str, status: str) -> None:
    check = check_nested(_host(fake_host.cpu().module("kvm_intel", value)))
    assert check.status == status
    assert check.details == {"module": "kvm_intel", "value": value}
    if status == "ok":
        assert check.fix is None and f"kvm_intel nested={value}" in check.found
    else:
        assert "modprobe -r kvm_intel && modprobe kvm_intel nested=1" in check.fix
        assert "options kvm_intel nested=1" in check.fix and "/etc/modprobe.d/kvm.conf" in check.fix


def test_nested_amd(fake_host: FakeHost) -> None:
    host = _host(fake_host.cpu("AuthenticAMD", "fpu svm").module("kvm_amd", "0"))
    check = check_nested(host)
    assert check.status == "fail" and check.details["module"] == "kvm_amd"
    assert "modprobe -r kvm_amd && modprobe kvm_amd nested=1" in check.fix and "kvm_intel" not in check.fix
    fake_host.module("kvm_amd", "1")
    assert check_nested(host).status == "ok"


def test_nested_parameter_missing(fake_host: FakeHost) -> None:
    check = check_nested(_host(fake_host.cpu().module("kvm_intel", None)))
    assert check.status == "fail" and "has no nested support" in check.found and "upgrade the host kernel" in check.fix


@pytest.mark.parametrize(("vendor", "flags", "module"), [("GenuineIntel", "vmx", "kvm_intel"),
                                                          ("AuthenticAMD", "svm", "kvm_amd"),
                                                          ("AuthenticAMD", "fpu", "kvm_amd")])
def test_nested_no_module_names_the_vendor_module(fake_host: FakeHost, vendor: str, flags: str,
                                                  module: str) -> None:
    check = check_nested(_host(fake_host.cpu(vendor, flags).module("kvm", None)))
    assert check.status == "fail" and "neither kvm_intel nor kvm_amd is loaded (loaded: kvm)" in check.found
    assert f"modprobe {module} nested=1" in check.fix


@pytest.mark.parametrize(("flags", "status", "flag"), [("fpu vmx sse", "ok", "vmx"), ("fpu svm", "ok", "svm"),
                                                       ("fpu sse hypervisor", "fail", None)])
def test_cpu_virt(fake_host: FakeHost, flags: str, status: str, flag: str | None) -> None:
    check = check_cpu_virt(_host(fake_host.cpu("GenuineIntel", flags)))
    assert check.status == status and check.details["flag"] == flag
    if flag is None:
        assert "enable VT-x" in check.fix


def test_cpu_virt_without_cpuinfo(fake_host: FakeHost) -> None:
    check = check_cpu_virt(_host(fake_host))
    assert check.status == "fail" and "vendor unknown" in check.found


@pytest.mark.parametrize(("release", "status"), [("4.9.0-8-amd64", "fail"), ("3.10.0-1160.el7.x86_64", "fail"),
                                                 ("4.10.0", "ok"), ("6.1.0-18-amd64", "ok"), ("weird", "warn")])
def test_kernel(fake_host: FakeHost, release: str, status: str) -> None:
    check = check_kernel(_host(fake_host.kernel(release)))
    assert check.status == status and check.details["release"] == release
    if status != "ok":
        assert "4.10 or later" in check.fix


def test_kernel_release_falls_back_to_uname_only_on_the_real_host(fake_host: FakeHost) -> None:
    assert kernel_release(_host(fake_host)) is None
    assert check_kernel(_host(fake_host)).status == "warn"
    assert kernel_release(HostRoot(Path("/"))) == os.uname().release


def test_kvm_missing_and_present(fake_host: FakeHost) -> None:
    check = check_kvm(_host(fake_host))
    assert check.status == "fail" and "is missing" in check.found and "modprobe kvm_intel" in check.fix
    check = check_kvm(_host(fake_host.kvm()))
    assert check.status == "ok" and check.details["path"] == str(fake_host.root / "dev/kvm")


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any file: permission denied cannot be shown")
def test_kvm_not_openable(fake_host: FakeHost) -> None:
    fake_host.kvm()
    os.chmod(fake_host.root / "dev/kvm", 0)
    check = check_kvm(_host(fake_host))
    assert check.status == "fail" and "usermod -aG kvm" in check.fix


def test_real_kvm_device_answers_the_api_ioctl() -> None:
    if not os.path.exists("/dev/kvm"):
        pytest.skip("this machine has no /dev/kvm")
    check = check_kvm(HostRoot())
    if "may not open" in check.found:
        pytest.skip("this user may not open /dev/kvm")
    assert check.status == "ok" and check.details["api"] == 12  # KVM_API_VERSION, fixed since Linux 2.6.22


@pytest.mark.parametrize(("text", "status"), [("QEMU emulator version 2.6.2 (Debian 1:2.6+dfsg-3)", "fail"),
                                              ("QEMU emulator version 2.7.0", "ok"), ("7.2.22", "ok"),
                                              (None, "warn"), ("no version here", "warn")])
def test_qemu_version(text: str | None, status: str) -> None:
    check = check_qemu_version(text, "test")
    assert check.status == status and check.details["source"] == "test"
    if status != "ok":
        assert "apt install qemu-system-x86" in check.fix


def test_identify_real_seabios() -> None:
    path = Path("/usr/share/seabios/bios-256k.bin")
    if not path.is_file():
        pytest.skip("seabios is not installed")
    ident = fw.identify(path.read_bytes())
    assert ident.kind == "seabios" and ident.version and ident.version[0].isdigit()
    check = fw.check_firmware("-bios", "bios-256k.bin", path, None)
    assert check.status == "ok" and ident.version in check.found


def test_identify_real_ovmf() -> None:
    path = Path("/usr/share/OVMF/OVMF_CODE.fd")
    if not path.is_file():
        pytest.skip("ovmf is not installed (.ci/apt-packages.txt has it)")
    assert fw.identify(path.read_bytes()).kind == "ovmf"
    assert fw.check_firmware("pflash0", str(path), path, None).status == "ok"


def test_old_seabios_fails(tmp_path: Path) -> None:
    # The layout SeaBIOS builds (the printf format, later the VERSION string between NULs), version 1.9.3.
    rom = tmp_path / "old.bin"
    rom.write_bytes(b"\0" * 100 + b"SeaBIOS (version %s)\n\0" + b"\x55" * 50 + b"\x001.9.3-20161025_171302\0" +
                    b"\0" * 100)
    check = fw.check_firmware("-bios", "old.bin", rom, None)
    assert check.status == "fail" and "1.9.3-20161025_171302" in check.found and "SeaBIOS >= 1.10" in check.fix


def test_unknown_firmware_warns_and_never_guesses(tmp_path: Path) -> None:
    rom = tmp_path / "custom.rom"
    rom.write_bytes(os.urandom(4096))
    check = fw.check_firmware("-bios", str(rom), rom, None)
    assert check.status == "warn" and "unknown" in check.found and check.details["kind"] == "unknown"
    check = fw.check_firmware("-bios", "bios-256k.bin", None, "remote host")
    assert check.status == "warn" and check.found == "firmware unknown: remote host"
    assert check.details["version"] is None


def test_kvm_that_cannot_run_guests_is_a_failure(tmp_path: Path) -> None:
    """/dev/kvm answering its API is not enough: without vmx/svm (nested host, kvm_pvm) full guests hang.
    The real /dev/kvm (it must create a VM and a vCPU) with a cpuinfo with and without vmx."""
    from wincrash.doctor.host import check_kvm_runs

    if not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("this machine has no /dev/kvm this user can open")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "kvm").symlink_to("/dev/kvm")
    (tmp_path / "proc").mkdir()
    cpuinfo = tmp_path / "proc" / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 hypervisor\n")
    check = check_kvm_runs(HostRoot(tmp_path))
    assert check.status == "fail" and "neither vmx nor svm" in check.found and "force_tcg" in check.fix
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 vmx\n")
    assert check_kvm_runs(HostRoot(tmp_path)).status == "ok"
    (tmp_path / "dev" / "kvm").unlink()
    assert check_kvm_runs(HostRoot(tmp_path)).status == "fail"
