"""Real QEMU processes for doctor's VM checks, and fake /sys + /proc + /dev trees for its host checks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

QEMU = "qemu-system-x86_64"
BASE = [QEMU, "-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config", "-m", "64M"]


@dataclass
class RunningQemu:
    proc: subprocess.Popen[bytes]
    sock: Path  # the QMP UNIX socket (or a placeholder when qmp is TCP)
    workdir: Path
    tcp_port: int | None = None

    @property
    def target(self) -> str:
        return f"tcp:127.0.0.1:{self.tcp_port}" if self.tcp_port else str(self.sock)


class QemuStarter:
    """Start QEMU with extra arguments; ``start`` skips the test when QEMU says the flags need KVM."""

    def __init__(self) -> None:
        if shutil.which(QEMU) is None:
            pytest.skip(f"{QEMU} is not installed")
        self.running: list[RunningQemu] = []

    def start(self, *args: str, tcp: bool = False, needs_kvm_hint: str | None = None) -> RunningQemu:
        workdir = Path(tempfile.mkdtemp(prefix="wcdr-"))  # short: UNIX socket paths stay < 108 bytes
        sock = workdir / "qmp.sock"
        port = None
        if tcp:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            qmp = f"tcp:127.0.0.1:{port},server=on,wait=off"
        else:
            qmp = f"unix:{sock},server=on,wait=off"
        errlog = workdir / "stderr"
        ctl = workdir / "ctl.sock"  # the harness's own monitor: readiness without taking doctor's socket
        with open(errlog, "wb") as err:
            proc = subprocess.Popen([*BASE, *args, "-qmp", qmp, "-qmp", f"unix:{ctl},server=on,wait=off"],
                                    stdout=subprocess.DEVNULL, stderr=err)
        vm = RunningQemu(proc, sock, workdir, port)
        self.running.append(vm)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                message = errlog.read_text(errors="replace").strip()
                if needs_kvm_hint and needs_kvm_hint in message:
                    pytest.skip(f"QEMU under TCG refuses {' '.join(args)}: {message!r} (this needs KVM)")
                raise AssertionError(f"QEMU exited ({proc.returncode}): {message}")
            if self._listening(vm) and _ready(ctl):
                return vm
            time.sleep(0.05)
        raise AssertionError("QEMU did not open its QMP socket within 20 s")

    @staticmethod
    def _listening(vm: RunningQemu) -> bool:
        if vm.tcp_port is None:
            return vm.sock.exists()
        return _port_open(vm.tcp_port)

    def stop_all(self) -> None:
        for vm in self.running:
            if vm.proc.poll() is None:
                vm.proc.kill()
            vm.proc.wait(10)
            shutil.rmtree(vm.workdir, ignore_errors=True)


def _ready(ctl: Path) -> bool:
    """QEMU answers query-status on the control socket: machine init is over (it may still exit before that,
    e.g. on a -cpu flag that needs KVM, after its QMP sockets already exist)."""
    if not ctl.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(ctl))
            f = s.makefile("rwb")
            f.readline()  # greeting
            for cmd in (b'{"execute":"qmp_capabilities"}\n', b'{"execute":"query-status"}\n'):
                f.write(cmd)
                f.flush()
                if b'"return"' not in f.readline():
                    return False
            return True
    except OSError:
        return False


def _port_open(port: int) -> bool:
    """True once QEMU listens; probing with a connect would take QEMU's single QMP client slot, so read /proc."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(want) and fields[3] == "0A":  # LISTEN
                return True
    return False


class FakeHost:
    """A fake root with just the files doctor reads: /proc/cpuinfo, /proc/sys/kernel/osrelease,
    /sys/module/kvm_*/parameters/nested and /dev/kvm (a regular file: opens, but is no KVM)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, relative: str, text: str) -> FakeHost:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return self

    def cpu(self, vendor: str = "GenuineIntel", flags: str = "fpu vme vmx sse2") -> FakeHost:
        return self.write("proc/cpuinfo", f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n\n"
                          f"processor\t: 1\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n")

    def kernel(self, release: str = "6.1.0-18-amd64") -> FakeHost:
        return self.write("proc/sys/kernel/osrelease", release + "\n")

    def module(self, name: str, nested: str | None) -> FakeHost:
        (self.root / "sys/module" / name / "parameters").mkdir(parents=True, exist_ok=True)
        if nested is not None:
            self.write(f"sys/module/{name}/parameters/nested", nested + "\n")
        return self

    def kvm(self) -> FakeHost:
        return self.write("dev/kvm", "")

    def good_intel(self) -> FakeHost:
        return self.cpu().kernel().module("kvm", None).module("kvm_intel", "Y").kvm()
