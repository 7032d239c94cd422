"""`wincrash doctor` through the real CLI: exit codes, --json structure, fixes in the human output, bad targets."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from doctor_helpers import FakeHost, QemuStarter
from helpers import run_wincrash

HOST_CHECKS = ["host.kvm", "host.kvm-runs-guests", "host.cpu-virt", "host.nested", "host.kernel", "host.qemu",
               "host.firmware"]
VM_CHECKS = ["vm.status", "vm.machine", "vm.cpu-virt", "vm.hyperv", "vm.hyperv-extra", "vm.panic", "vm.vmcoreinfo",
             "vm.free-space"]

pytestmark = pytest.mark.qemu


def _need_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None or not Path("/usr/share/seabios/bios-256k.bin").exists():
        pytest.skip("qemu-system-x86_64 and seabios are not installed")


def test_all_ok_exits_0(fake_host: FakeHost) -> None:
    _need_qemu()
    fake_host.good_intel()
    proc = run_wincrash("doctor", "--host-root", fake_host.root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("7 ok, 0 warnings, 0 failures: all checks passed")
    assert "fix:" not in proc.stdout and proc.stderr == ""


def test_json_structure_with_a_vm(fake_host: FakeHost, qemu: QemuStarter) -> None:
    fake_host.good_intel().module("kvm_intel", "N")
    vm = qemu.start("-cpu", "qemu64,hv-relaxed", "-device", "pvpanic")
    proc = run_wincrash("doctor", vm.target, "--json", "--host-root", fake_host.root)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"vm", "ok", "counts", "checks"}
    assert data["vm"] == {"kind": "unix", "name": str(vm.sock), "path": str(vm.sock)}
    assert [c["name"] for c in data["checks"]] == HOST_CHECKS + VM_CHECKS
    assert data["ok"] is False and sum(data["counts"].values()) == len(data["checks"])
    for check in data["checks"]:
        assert set(check) == {"name", "status", "found", "fix", "details"}
        assert check["status"] in ("ok", "warn", "fail") and check["found"]
        assert (check["fix"] is None) == (check["status"] == "ok"), check
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["host.nested"]["status"] == "fail" and by_name["host.nested"]["details"]["value"] == "N"
    assert by_name["vm.hyperv"]["details"]["required"]["hv-relaxed"] is True
    assert by_name["vm.panic"]["status"] == "ok"


def test_human_output_names_each_fix(fake_host: FakeHost, qemu: QemuStarter) -> None:
    fake_host.cpu("AuthenticAMD", "fpu svm").kernel("4.4.0-210-generic").module("kvm_amd", "0").kvm()
    vm = qemu.start("-cpu", "qemu64,-svm")
    human = run_wincrash("doctor", vm.target, "--host-root", fake_host.root)
    data = json.loads(run_wincrash("doctor", vm.target, "--json", "--host-root", fake_host.root).stdout)
    assert human.returncode == 1 and human.stderr == ""
    lines = human.stdout.splitlines()
    assert lines[0] == f"VM: {vm.sock}"
    problems = [c for c in data["checks"] if c["status"] != "ok"]
    assert {"host.nested", "host.kernel", "vm.cpu-virt", "vm.panic"} <= {c["name"] for c in problems}
    for check in problems:
        mark = "FAIL" if check["status"] == "fail" else "WARN"
        i = lines.index(f"[{mark}] {check['name']}: {check['found']}")
        assert lines[i + 1] == f"       fix: {check['fix']}"
    assert "fix: stop all VMs, then `modprobe -r kvm_amd && modprobe kvm_amd nested=1`" in human.stdout
    assert "options kvm_amd nested=1" in human.stdout
    counts = data["counts"]
    assert lines[-1] == f"{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failures: fix the items above"


def test_dump_dir_that_does_not_exist(qemu: QemuStarter, tmp_path: Path) -> None:
    vm = qemu.start("-cpu", "qemu64")
    proc = run_wincrash("doctor", vm.target, "--json", "--dump-dir", tmp_path / "nowhere")
    space = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["vm.free-space"]
    assert proc.returncode == 1 and space["status"] == "fail" and "--dump-dir" in space["fix"]


def test_old_qemu_binary_without_a_vm(fake_host: FakeHost, tmp_path: Path) -> None:
    # QEMU 2.6 cannot be installed here: a stand-in prints what its --version printed.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'QEMU emulator version 2.6.2 (Debian 1:2.6+dfsg-3.1)'"
                    "\nexit 0\n")
    fake.chmod(0o755)
    fake_host.good_intel()
    proc = run_wincrash("doctor", "--json", "--host-root", fake_host.root,
                        env={"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"})
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert proc.returncode == 1
    assert checks["host.qemu"]["status"] == "fail" and checks["host.qemu"]["details"]["version"] == "2.6.2"
    assert checks["host.firmware"]["status"] == "warn" and checks["host.firmware"]["details"]["kind"] == "unknown"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["missing", "regular-file", "refused", "bad-tcp"])
def test_bad_target_is_one_line_exit_2(tmp_path: Path, kind: str) -> None:
    regular = tmp_path / "disk.qcow2"
    regular.write_bytes(b"QFI\xfb")
    target, expected = {
        "missing": (str(tmp_path / "nope.sock"), "no such socket"),
        "regular-file": (str(regular), "is a regular file, not a QMP socket"),
        "refused": (f"tcp:127.0.0.1:{_free_port()}", "connection refused"),
        "bad-tcp": ("tcp:nohost", "expected tcp:HOST:PORT"),
    }[kind]
    proc = run_wincrash("doctor", target, "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("wincrash: error: ") and expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
