"""doctor on libvirt domains: QMP through libvirt-qemu's monitor passthrough (libvirt holds the socket)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import run_wincrash
from wincrash_testkit.testguest.libvirt_domain import domain_xml

libvirt = pytest.importorskip("libvirt", reason="python3-libvirt is not installed")


def test_test_driver_cannot_be_examined() -> None:
    # The test driver has no QEMU behind it: doctor cannot run, and says so in one line.
    proc = run_wincrash("doctor", "test", "--connect", "test:///default")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("wincrash: error: libvirt domain 'test' (test:///default): libvirt cannot pass "
                                  "QMP commands to this domain")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_domain() -> None:
    proc = run_wincrash("doctor", "no-such-domain-wincrash", "--connect", "test:///default")
    assert proc.returncode == 2 and "no libvirt domain named 'no-such-domain-wincrash'" in proc.stderr


@pytest.mark.qemu
def test_real_domain(tmp_path: Path, libvirt_system) -> None:  # noqa: ANN001
    conn = libvirt_system
    workdir = Path(tempfile.mkdtemp(prefix="wcdl-"))
    name = f"wincrash-doctor-{os.getpid()}"
    dom = None
    try:
        # No OS: SeaBIOS (libvirt's default firmware), an ISA pvpanic, qemu64 (svm under TCG), no hv-*.
        dom = conn.createXML(domain_xml(name, workdir / name, None), 0)
        proc = run_wincrash("doctor", name, "--connect", "qemu:///system", "--json", "--dump-dir", tmp_path)
        assert proc.returncode == 1, proc.stderr
        data = json.loads(proc.stdout)
        checks = {c["name"]: c for c in data["checks"]}
        assert data["vm"]["kind"] == "libvirt" and data["vm"]["domain"] == name
        assert checks["vm.status"]["status"] == "ok"
        assert checks["vm.panic"]["status"] == "ok" and checks["vm.panic"]["details"]["pvpanic"]
        assert checks["vm.hyperv"]["status"] == "warn"
        assert checks["vm.free-space"]["details"]["guest_ram"] == 64 << 20
        assert checks["host.qemu"]["details"]["source"] == "the VM's query-version"
        # libvirt's QEMU is found through its vCPU thread, so the firmware file can be read here.
        firmware = checks["host.firmware"]
        assert firmware["details"]["kind"] == "seabios" and firmware["status"] == "ok", firmware
    finally:
        if dom is not None:
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
        shutil.rmtree(workdir, ignore_errors=True)


def test_shut_off_domain_is_one_line_exit_2(tmp_path: Path, libvirt_system) -> None:  # noqa: ANN001
    conn = libvirt_system
    name = f"wincrash-doctor-off-{os.getpid()}"
    dom = conn.defineXML(domain_xml(name, tmp_path / name, None))  # defined, never started
    try:
        proc = run_wincrash("doctor", name, "--connect", "qemu:///system")
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.strip() == (f"wincrash: error: libvirt domain {name!r} (qemu:///system): the domain is "
                                       f"shutoff: start it (`virsh -c qemu:///system start {name}`) and run doctor "
                                       "again")
    finally:
        dom.undefine()
