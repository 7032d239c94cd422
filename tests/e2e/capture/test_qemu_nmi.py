"""`wincrash nmi` against real QEMU (TCG): the Windows-like test guest, a QEMU without OS, a stopped VM."""

from __future__ import annotations

import json

import pytest
from helpers import run_wincrash

pytestmark = pytest.mark.qemu


def test_nmi_wait_sees_the_panic(make_guest) -> None:  # noqa: ANN001
    guest = make_guest(cpus=2)
    assert guest.status() == "running"
    proc = run_wincrash("nmi", guest.qmp_path, "--wait", "20", "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["method"] == "nmi"
    assert result["panic"]["event"] == "GUEST_PANICKED" and result["panic"]["source"] == "pvpanic"
    assert guest.status() == "guest-panicked"
    # The guest's NMI path really ran: KiBugcheckData holds 0x80 and the parameters, like Windows.
    words = guest.hmp(f"xp /5gx {guest.memory.bugcheck_pa:#x}").split()
    values = [int(w, 16) for w in words if w.startswith("0x") and not w.endswith(":")]
    assert values[:2] == [0x80, 0x4F4454]


def test_nmi_human_output_and_panicked_vm_refused(make_guest) -> None:  # noqa: ANN001
    guest = make_guest(cpus=1)
    proc = run_wincrash("nmi", guest.qmp_path, "--wait", "20", check=True)
    assert "NMI injected" in proc.stdout and "guest panicked (reported by pvpanic" in proc.stdout
    again = run_wincrash("nmi", guest.qmp_path)
    assert again.returncode == 2 and "not running (status: guest-panicked)" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_nmi_without_os_times_out_clearly(make_guest) -> None:  # noqa: ANN001
    guest = make_guest(with_os=False)  # SeaBIOS with nothing to boot: nobody handles the NMI
    proc = run_wincrash("nmi", guest.qmp_path, "--wait", "2")
    assert proc.returncode == 1, proc
    assert "no panic reported within 2 s after the NMI" in proc.stderr and "NMICrashDump=1" in proc.stderr
    assert guest.status() == "running"


def test_keyboard_crash_without_os_times_out(make_guest) -> None:  # noqa: ANN001
    guest = make_guest(with_os=False)
    proc = run_wincrash("nmi", guest.qmp_path, "--keyboard", "--wait", "1")
    assert proc.returncode == 1 and "CrashOnCtrlScroll=1" in proc.stderr, proc


def test_nmi_to_stopped_vm_is_refused(make_guest) -> None:  # noqa: ANN001
    guest = make_guest(paused=True)
    proc = run_wincrash("nmi", guest.qmp_path)
    assert proc.returncode == 2 and "not running (status: prelaunch)" in proc.stderr, proc
    guest.qmp("cont")
    guest.qmp("stop")
    proc = run_wincrash("nmi", guest.qmp_path, "--json")
    assert proc.returncode == 2 and "not running (status: paused)" in proc.stderr and "cont" in proc.stderr
    assert proc.stdout == ""


def test_nmi_over_tcp(make_guest) -> None:  # noqa: ANN001
    from capture_helpers import free_port

    port = free_port()
    guest = make_guest(cpus=1, extra_args=["-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off"])
    proc = run_wincrash("nmi", f"tcp:127.0.0.1:{port}", "--wait", "20", "--json", check=True)
    assert json.loads(proc.stdout)["panic"]["source"] == "pvpanic"
    raw = guest.hmp(f"xp /1gx {guest.memory.bugcheck_pa:#x}").split()[-1]
    assert int(raw, 16) == 0x80
