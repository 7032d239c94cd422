"""`wincrash grab-pagefile` through the real CLI on images built with a real libguestfs appliance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_wincrash


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wincrash: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.guestfs
@pytest.mark.slow
def test_mbr_qcow2_with_backing_file(disks, sha256, tmp_path: Path) -> None:
    before = {p: sha256(p) for p in (disks.top_a, disks.base_a)}
    out = tmp_path / "out"
    proc = run_wincrash("grab-pagefile", disks.top_a, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {p: sha256(p) for p in (disks.top_a, disks.base_a)} == before, "input images changed"

    (install,) = result["installs"]
    assert install["found_by"] == "inspection"
    assert install["device"] == "/dev/sda2"
    assert install["control_set"] == "ControlSet001"
    assert install["settings"]["CrashDumpEnabled"] == 7
    assert install["settings"]["DumpFile"] == "%SystemRoot%\\MEMORY.DMP"
    expected = {
        "pagefile.sys": "/pagefile.sys",
        "swapfile.sys": "/swapfile.sys",
        "MEMORY.DMP": "/Windows/MEMORY.DMP",
        "Minidump/010121-1111-01.dmp": "/Windows/Minidump/010121-1111-01.dmp",
        "Minidump/022121-2222-01.dmp": "/Windows/Minidump/022121-2222-01.dmp",
        "LiveKernelReports/WATCHDOG/WD-20210221-0138.dmp": "/Windows/LiveKernelReports/WATCHDOG/WD-20210221-0138.dmp",
    }
    copied = {str(Path(c["path"]).relative_to(out)): c for c in result["copied"]}
    assert set(copied) == set(expected)
    for local, guest in expected.items():
        assert (out / local).read_bytes() == disks.files_a[guest].read_bytes(), local
        assert (out / local).stat().st_mode & 0o777 == 0o600
        assert copied[local]["size"] == disks.files_a[guest].stat().st_size
    assert {c["role"] for c in result["copied"]} == {"pagefile", "swapfile", "dumpfile", "minidump",
                                                    "live-kernel-report"}

    (pagefile,) = result["pagefiles"]
    dump = pagefile["dump"]
    cut = out / "pagefile-dump.dmp"
    assert dump["path"] == str(cut)
    # trimmed to what the header says (the triage header's SizeOfDump at 0x2004) plus the secondary data
    # blobs that follow it: exactly the real dump file
    triage = disks.triage.read_bytes()
    size_of_dump = int.from_bytes(triage[0x2004:0x2008], "little")
    assert dump["size"] == dump["extent"] == len(triage) > size_of_dump
    assert cut.read_bytes() == triage
    assert dump["kind"] == "dmp64"
    print("timings", result["timings"])
    assert cut.stat().st_mode & 0o777 == 0o600
    assert dump["bugcheck"]["code"].lower() == "0x1000007e"
    assert not [p.name for p in out.rglob(".*wincrash-partial*")]


@pytest.mark.guestfs
@pytest.mark.slow
def test_gpt_damaged_windows_found_by_scan_and_pagefile_without_dump(disks, sha256, tmp_path: Path) -> None:
    """Two disks at once (the second has no NTFS); inspection fails, the scan finds Windows."""
    before = sha256(disks.disk_b)
    out = tmp_path / "out"
    proc = run_wincrash("grab-pagefile", disks.disk_b, disks.disk_c, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert sha256(disks.disk_b) == before
    assert "found by scanning NTFS" in proc.stdout
    assert "pagefile.sys holds no crash dump" in proc.stdout
    assert "CrashDumpEnabled: 2" in proc.stdout
    assert (out / "pagefile.sys").read_bytes() == disks.files_b["/pagefile.sys"].read_bytes()
    minidump = out / "Minidump" / "030321-3333-01.dmp"
    assert minidump.read_bytes() == disks.files_b["/Windows/Minidump/030321-3333-01.dmp"].read_bytes()
    assert not list(out.glob("*-dump.dmp"))
    assert "no dump file at C:\\Windows\\MEMORY.DMP" in proc.stdout


@pytest.mark.guestfs
@pytest.mark.slow
def test_no_ntfs(disks, tmp_path: Path) -> None:
    proc = run_wincrash("grab-pagefile", disks.disk_c, "-o", tmp_path)
    _assert_one_line_error(proc, "no NTFS filesystem", "ext4 on /dev/sda1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.guestfs
@pytest.mark.slow
def test_no_windows(disks, tmp_path: Path) -> None:
    proc = run_wincrash("grab-pagefile", disks.disk_d, "-o", tmp_path)
    _assert_one_line_error(proc, "no Windows installation", "/dev/sda1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.qemu
@pytest.mark.guestfs
@pytest.mark.slow
def test_disk_in_use_by_running_vm(disks, sha256, tmp_path: Path) -> None:
    """A real QEMU holds the image lock: refuse with an explanation; --force-share reads anyway."""
    before = sha256(disks.top_a)
    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-S", "-nodefaults", "-display", "none", "-m", "64",
         "-drive", f"file={disks.top_a},format=qcow2,if=virtio"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["qemu-img", "info", str(disks.top_a)], capture_output=True).returncode == 0:
            assert vm.poll() is None, vm.stderr.read() if vm.stderr else ""
            assert time.monotonic() < deadline, "qemu did not lock the image"
            time.sleep(0.2)
        out = tmp_path / "out"
        proc = run_wincrash("grab-pagefile", disks.top_a, "-o", out)
        _assert_one_line_error(proc, "in use by a running VM", "--force-share")
        assert not out.exists() or list(out.iterdir()) == []

        proc = run_wincrash("prepare", disks.top_a, "--dry-run")
        _assert_one_line_error(proc, "in use by a running VM")

        proc = run_wincrash("grab-pagefile", disks.top_a, "-o", out, "--force-share", "--json")
        assert proc.returncode == 0, proc.stderr
        assert "warning" in proc.stderr and "may be inconsistent" in proc.stderr
        assert json.loads(proc.stdout)["images"][0]["in_use"] is True
        cut = (out / "pagefile-dump.dmp").read_bytes()
        assert len(cut) > 0x2000 and cut == disks.triage.read_bytes()[:len(cut)]
    finally:
        vm.send_signal(signal.SIGTERM)
        vm.wait(timeout=30)
    assert sha256(disks.top_a) == before


def test_bad_inputs_fail_fast_with_one_line(tmp_path: Path) -> None:
    """Errors the host can see are reported before any appliance starts (these run in well under a second)."""
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n" * 100)
    started = time.monotonic()
    _assert_one_line_error(run_wincrash("grab-pagefile", text, "-o", tmp_path / "o"), "not a disk image")
    _assert_one_line_error(run_wincrash("grab-pagefile", tmp_path / "missing.qcow2"), "no such file")
    _assert_one_line_error(run_wincrash("grab-pagefile", tmp_path), "is a directory")
    _assert_one_line_error(run_wincrash("prepare", text, "--dry-run"), "not a disk image")
    _assert_one_line_error(run_wincrash("prepare", text, "--ram", "lots"), "--ram lots")
    _assert_one_line_error(run_wincrash("prepare", text, "--dump", "huge"), "--dump huge")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_permission_denied(tmp_path: Path) -> None:
    """An image the user may not read: one line naming the cause (as root, the CLI runs as nobody)."""
    image = tmp_path / "vm.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "16M"], check=True, capture_output=True)
    image.chmod(0o600)
    if os.geteuid() != 0:
        proc = run_wincrash("grab-pagefile", image, "-o", tmp_path / "o")
    else:  # root reads everything: drop to nobody, with the image in a folder nobody can enter
        tmp_path.chmod(0o755)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               sys.executable, "-m", "wincrash", "grab-pagefile", str(image), "-o", "/tmp/never-written"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/",
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
        if "No module named" in proc.stderr:
            pytest.skip(f"the CLI cannot run as an unprivileged user here: {proc.stderr.strip()[-200:]}")
    _assert_one_line_error(proc, "permission denied")
