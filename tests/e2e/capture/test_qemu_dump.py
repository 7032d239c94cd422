"""`wincrash dump` against real QEMU (TCG): what lands in the file, and every way it can go wrong."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capture_helpers import free_port, read_phys, read_qemu_elf
from helpers import REPO, run_wincrash

pytestmark = pytest.mark.qemu

ROM_LINEAR = 0xF0000  # where the test guest's firmware runs (wincrash_testkit.testguest.stub)


def _check_stub_registers(path: Path, guest) -> list[dict[str, int]]:  # noqa: ANN001
    cpus, _ = read_qemu_elf(path)
    assert len(cpus) == len(guest.memory.gs_bases)
    for index, cpu in enumerate(cpus):
        assert cpu["version"] == 1
        assert cpu["cr3"] == guest.memory.dtb
        assert cpu["gs_base"] == guest.memory.gs_bases[index]
        assert cpu["r15"] == 0x57494E4352415348  # 'WINCRASH', set by the stub before idling
        assert ROM_LINEAR <= cpu["rip"] < ROM_LINEAR + 0x10000
    return cpus


def test_dump_elf_carries_the_stub_registers(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    guest = make_guest(cpus=2)
    out = tmp_path / "vm.elf"
    proc = run_wincrash("dump", guest.qmp_path, "-o", out, "--json", check=True)
    result = json.loads(proc.stdout)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert result["size"] == out.stat().st_size > result["guest_ram"] == guest.ram_size
    assert result["status_before"] == result["status_after"] == "running"
    assert 0 < result["paused_seconds"] <= result["seconds"] + 0.5
    cpus = _check_stub_registers(out, guest)
    assert [c["rax"] for c in cpus] == [0, 1]  # each vCPU idles with its index in rax
    assert guest.status() == "running"
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_dump_after_nmi_holds_the_bugcheck(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    guest = make_guest(cpus=2)
    run_wincrash("nmi", guest.qmp_path, "--wait", "20", check=True)
    out = tmp_path / "crashed.elf"
    proc = run_wincrash("dump", guest.qmp_path, "-o", out, check=True)
    assert "already stopped (guest-panicked)" in proc.stdout
    _, loads = read_qemu_elf(out)
    data = read_phys(out, loads, guest.memory.bugcheck_pa, 40)
    assert int.from_bytes(data[:8], "little") == 0x80
    assert int.from_bytes(data[8:16], "little") == 0x4F4454
    # The KPCR page of CPU 0 is in the dump at the physical address the page tables give it.
    cpus, _ = read_qemu_elf(out)
    assert cpus[0]["cr3"] == guest.memory.dtb


def test_dump_refuses_to_overwrite_and_checks_format(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    guest = make_guest(cpus=1)
    out = tmp_path / "exists.elf"
    out.write_bytes(b"keep me")
    proc = run_wincrash("dump", guest.qmp_path, "-o", out)
    assert proc.returncode == 2 and "already exists" in proc.stderr and out.read_bytes() == b"keep me"
    proc = run_wincrash("dump", guest.qmp_path, "-o", tmp_path / "x", "--format", "kdump-lzo")
    assert proc.returncode == 2 and "unknown format" in proc.stderr
    proc = run_wincrash("dump", guest.qmp_path, "-o", tmp_path / "w.dmp", "--format", "win-dmp")
    assert proc.returncode == 2 and "-device vmcoreinfo" in proc.stderr, proc
    assert not (tmp_path / "w.dmp").exists() and guest.status() == "running"
    proc = run_wincrash("dump", guest.qmp_path, "-o", tmp_path / "k.kdump", "--format", "kdump-zlib", check=True)
    assert (tmp_path / "k.kdump").read_bytes()[:16].startswith(b"makedumpfile")  # QEMU's flattened kdump


def test_dump_over_tcp_lets_qemu_write_the_file(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    port = free_port()
    guest = make_guest(cpus=2, extra_args=["-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off"])
    out = tmp_path / "tcp.elf"
    proc = run_wincrash("dump", f"tcp:127.0.0.1:{port}", "-o", out, "--json", check=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # QEMU creates 0400; we fix it
    assert json.loads(proc.stdout)["paused_seconds"] > 0
    _check_stub_registers(out, guest)


def _start_dump(guest, out: Path) -> subprocess.Popen[str]:  # noqa: ANN001
    proc = subprocess.Popen([sys.executable, "-m", "wincrash", "dump", str(guest.qmp_path), "-o", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the dump is really under way
        # the output being written: a nameless O_TMPFILE the process holds (or a hidden partial name)
        partial = [p for p in out.parent.iterdir() if ".wincrash-partial-" in p.name]
        with contextlib.suppress(OSError):
            partial += [fd for fd in Path(f"/proc/{proc.pid}/fd").iterdir()
                        if os.readlink(fd).startswith(f"{out.parent}/#")]
        if partial and max(p.stat().st_size for p in partial) > 32 << 20:
            return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the dump never got under way")


@pytest.mark.slow
def test_qemu_killed_mid_dump(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    guest = make_guest(cpus=1, ram_mib=1536)
    out = tmp_path / "killed.elf"
    proc = _start_dump(guest, out)
    guest.proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines() == [stderr.strip()] and "QEMU exited during the dump" in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_mid_dump_cancels_and_resumes(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    guest = make_guest(cpus=1, ram_mib=1536)
    out = tmp_path / "cancelled.elf"
    proc = _start_dump(guest, out)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "dump cancelled (Ctrl-C)" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no output, no partial file
    deadline = time.monotonic() + 20
    while guest.status() != "running":  # QEMU's write failed, the dump ended, the guest resumed
        assert time.monotonic() < deadline, guest.status()
        time.sleep(0.1)
    assert guest.qmp("query-dump")["status"] == "failed"
