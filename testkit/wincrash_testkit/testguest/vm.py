"""Start a real qemu-system-x86_64 (TCG) running the Windows-like test guest, or no OS at all.

Two QMP sockets: ``qmp.sock`` is the one the user (wincrash) talks to; ``ctl.sock`` lets the test
harness watch and steer the VM without taking the user's socket (QEMU serves one client per socket).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from wincrash_testkit.testguest.memory import GuestMemory, build_ram_file, trivial_memory
from wincrash_testkit.testguest.stub import StubConfig, build_rom

QEMU = "qemu-system-x86_64"


class TestGuest:
    """One QEMU process; use as a context manager so that it never outlives the test."""

    __test__ = False  # not a pytest class

    def __init__(self, workdir: Path, memory: GuestMemory | None = None, ram_mib: int = 64,
                 with_os: bool = True, paused: bool = False, pvpanic: bool = True,
                 extra_args: list[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.memory = memory if memory is not None or not with_os else trivial_memory()
        self.ram_size = ram_mib << 20
        self.with_os = with_os
        self.paused = paused
        self.pvpanic = pvpanic
        self.extra_args = extra_args or []
        self.qmp_path = self.workdir / "qmp.sock"
        self.ctl_path = self.workdir / "ctl.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stub: StubConfig | None = None

    def command(self) -> list[str]:
        """The QEMU command line (also handy for reproducing a failure by hand)."""
        if shutil.which(QEMU) is None:
            raise RuntimeError(f"{QEMU} is not installed")
        cpus = len(self.memory.gs_bases) if self.memory else 1
        cmd = [QEMU, "-accel", "tcg", "-machine", "pc", "-cpu", "qemu64", "-smp", str(cpus),
               "-display", "none", "-nodefaults", "-no-user-config", "-m", f"{self.ram_size >> 20}M",
               "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
               "-qmp", f"unix:{self.ctl_path},server=on,wait=off",
               "-action", "panic=pause"]
        if self.memory is not None:
            ram_file, rom_file = self.workdir / "ram.img", self.workdir / "stub.rom"
            self.stub = build_ram_file(self.memory, ram_file, self.ram_size)
            rom_file.write_bytes(build_rom(self.stub))
            cmd += ["-object", f"memory-backend-file,id=pc.ram,size={self.ram_size},mem-path={ram_file},share=off",
                    "-machine", "memory-backend=pc.ram", "-bios", str(rom_file)]
        if self.pvpanic:
            cmd += ["-device", "pvpanic"]
        if self.paused:
            cmd += ["-S"]
        return cmd + self.extra_args

    def start(self, boot_timeout: float = 30) -> TestGuest:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "qemu.log", "wb"))  # noqa: SIM115
        deadline = time.monotonic() + boot_timeout
        while not (self.qmp_path.exists() and self.ctl_path.exists()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited at start: {(self.workdir / 'qemu.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("QEMU did not create its QMP sockets")
            time.sleep(0.05)
        if self.memory is not None and not self.paused:
            self.wait_booted(deadline)
        return self

    def hmp(self, command: str) -> str:
        """One human-monitor command over the control socket (a fresh connection each time)."""
        return str(self.qmp("human-monitor-command", {"command-line": command}))

    def qmp(self, command: str, arguments: dict[str, object] | None = None) -> object:
        """A synchronous QMP command on the control socket: small and dependency-free on purpose."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(self.ctl_path))
            f = s.makefile("rw")
            json.loads(f.readline())
            f.write(json.dumps({"execute": "qmp_capabilities"}) + "\n")
            f.flush()
            json.loads(f.readline())
            msg: dict[str, object] = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            f.write(json.dumps(msg) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply:
                    return reply["return"]
                if "error" in reply:
                    raise RuntimeError(f"{command}: {reply['error']}")

    def registers(self) -> str:
        return self.hmp("info registers -a")

    def wait_booted(self, deadline: float) -> None:
        """Wait until every vCPU runs with CR3 = DTB (so the firmware is in its idle loop)."""
        assert self.memory is not None
        want = f"CR3={self.memory.dtb:016x}"
        while True:
            regs = self.registers()
            if regs.count(want) == len(self.memory.gs_bases) and regs.count("HLT=1") == len(self.memory.gs_bases):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"test guest did not boot; registers:\n{regs}")
            time.sleep(0.1)

    def status(self) -> str:
        return str(self.qmp("query-status")["status"])  # type: ignore[index]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        for p in (self.qmp_path, self.ctl_path, self.workdir / "ram.img"):
            with contextlib.suppress(OSError):
                os.unlink(p)

    def __enter__(self) -> TestGuest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
