"""The libvirt path: a real libvirtd (qemu:///system, TCG domain) when one runs, and the test driver."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
from capture_helpers import read_phys, read_qemu_elf, wait_libvirt_booted
from helpers import run_wincrash

libvirt = pytest.importorskip("libvirt", reason="python3-libvirt is not installed")


def test_test_driver_nmi() -> None:
    proc = run_wincrash("nmi", "test", "--connect", "test:///default", "--json", check=True)
    assert json.loads(proc.stdout)["vm"] == {"kind": "libvirt", "name": "libvirt domain 'test' (test:///default)",
                                             "domain": "test", "uri": "test:///default"}


def test_test_driver_wait_times_out() -> None:
    proc = run_wincrash("nmi", "test", "--connect", "test:///default", "--wait", "1")
    assert proc.returncode == 1 and "no panic reported within 1 s" in proc.stderr, proc


def test_test_driver_dump_error_is_one_line(tmp_path: Path) -> None:
    # The test driver has no memory-only dumps: the libvirt error must come out as one clean line.
    proc = run_wincrash("dump", "test", "--connect", "test:///default", "-o", tmp_path / "t.elf")
    assert proc.returncode == 2 and proc.stderr.startswith("wincrash: error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_uri() -> None:
    proc = run_wincrash("nmi", "x", "--connect", "bogus:///nothing")
    assert proc.returncode == 2 and "cannot connect to libvirt at bogus:///nothing" in proc.stderr


@pytest.mark.qemu
def test_libvirtd_nmi_panic_and_dump(libvirt_domain, tmp_path: Path) -> None:  # noqa: ANN001
    name, memory = libvirt_domain(cpus=2)
    wait_libvirt_booted(name, memory)
    out = tmp_path / "live.elf"
    proc = run_wincrash("dump", name, "-o", out, "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["status_before"] == result["status_after"] == "running"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    cpus, _ = read_qemu_elf(out)
    assert [c["cr3"] for c in cpus] == [memory.dtb] * 2 and [c["gs_base"] for c in cpus] == memory.gs_bases

    proc = run_wincrash("nmi", name, "--wait", "20", "--json", check=True)
    panic = json.loads(proc.stdout)["panic"]
    assert panic["event"] == "GUEST_PANICKED" and panic["action"] == "pause"

    again = run_wincrash("nmi", name)
    assert again.returncode == 2 and "not running (status: guest-panicked)" in again.stderr

    crashed = tmp_path / "crashed.elf"
    run_wincrash("dump", name, "-o", crashed, check=True)
    _, loads = read_qemu_elf(crashed)
    assert int.from_bytes(read_phys(crashed, loads, memory.bugcheck_pa, 8), "little") == 0x80


@pytest.mark.qemu
def test_libvirtd_suspended_domain_refused(libvirt_domain) -> None:  # noqa: ANN001
    name, memory = libvirt_domain(cpus=1)
    conn = libvirt.open("qemu:///system")
    conn.lookupByName(name).suspend()
    conn.close()
    proc = run_wincrash("nmi", name)
    assert proc.returncode == 2 and "not running (status: paused)" in proc.stderr, proc


@pytest.mark.qemu
def test_libvirtd_capture_streams_and_equals_dump_then_convert(libvirt_domain, tmp_path: Path) -> None:  # noqa: ANN001
    """libvirt's memory-only dump into our FIFO: MEMORY.DMP straight from the stream, no ELF, equal byte for
    byte to libvirt's own memory-only dump converted (the domain suspended, so both see one moment); a running
    domain is paused only by the dump and runs again after; libvirtd survives it."""
    from wincrash_testkit.testguest.memory import synth_memory

    name, memory = libvirt_domain(memory=synth_memory(build=19041, cpus=2, ram_mib=256, seed=9), ram_mib=256)
    wait_libvirt_booted(name, memory)
    live = tmp_path / "live.dmp"
    result = json.loads(run_wincrash("capture", name, "-o", live, "--json", check=True).stdout)
    assert result["streamed"] is True, result["not_streamed_because"]
    assert result["dump"]["status_before"] == result["dump"]["status_after"] == "running"
    assert result["dump"]["paused_seconds"] is not None and result["dump"]["paused_seconds"] > 0
    assert stat.S_IMODE(live.stat().st_mode) == 0o600 and live.read_bytes()[:8] == b"PAGEDU64"

    conn = libvirt.open("qemu:///system")
    conn.lookupByName(name).suspend()
    conn.close()
    streamed, elf, converted = tmp_path / "s.dmp", tmp_path / "v.elf", tmp_path / "c.dmp"
    result = json.loads(run_wincrash("capture", name, "-o", streamed, "--json", check=True).stdout)
    assert result["streamed"] is True and result["dump"]["status_after"] == "paused"
    run_wincrash("dump", name, "-o", elf, check=True)
    run_wincrash("convert", elf, "-o", converted, check=True)
    assert streamed.read_bytes() == converted.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.dmp", "live.dmp", "s.dmp", "v.elf"]
    libvirt.open("qemu:///system").close()  # libvirtd still answers


@pytest.mark.qemu
def test_libvirtd_ctrl_c_mid_stream_leaves_nothing_and_resumes(libvirt_domain, tmp_path: Path) -> None:  # noqa: ANN001
    import glob
    import signal
    import subprocess
    import sys
    import time

    from wincrash_testkit.testguest.memory import synth_memory

    name, memory = libvirt_domain(memory=synth_memory(build=19041, cpus=1, ram_mib=1024, seed=10), ram_mib=1024)
    wait_libvirt_booted(name, memory)
    fifos = set(glob.glob(os.path.join(tempfile.gettempdir(), "wincrash-fifo-*")))
    conn = libvirt.open("qemu:///system")
    dom = conn.lookupByName(name)
    proc = subprocess.Popen([sys.executable, "-m", "wincrash", "capture", name, "-o", str(tmp_path / "M.DMP")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:  # libvirt's dump job has begun
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "cancelled" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "wincrash-fifo-*"))) == fifos  # FIFO removed
    while dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
        assert time.monotonic() < deadline, dom.state()
        time.sleep(0.05)
    conn.close()
