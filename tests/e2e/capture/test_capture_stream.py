"""`wincrash capture` streams MEMORY.DMP out of a real QEMU (TCG): the result equals `dump` + `convert` of
the same paused VM byte for byte, no ELF touches the disk, and failures leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_wincrash
from wincrash_testkit.testguest.memory import synth_memory

pytestmark = pytest.mark.qemu


def _capture_equals_convert(guest, tmp_path: Path, *args: str) -> dict:  # noqa: ANN001
    streamed, elf, converted = tmp_path / "s.dmp", tmp_path / "v.elf", tmp_path / "c.dmp"
    result = json.loads(run_wincrash("capture", guest.qmp_path, "-o", streamed, "--json", *args, check=True).stdout)
    assert result["streamed"] is True, result["not_streamed_because"]
    run_wincrash("dump", guest.qmp_path, "-o", elf, check=True)
    run_wincrash("convert", elf, "-o", converted, *args, check=True)
    assert streamed.read_bytes() == converted.read_bytes()
    assert streamed.stat().st_mode & 0o777 == 0o600
    return result


def test_stream_equals_dump_then_convert_of_the_paused_guest(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    memory = synth_memory(build=19041, cpus=2, ram_mib=256, seed=3)
    guest = make_guest(memory=memory, ram_mib=256)
    guest.qmp("stop")
    result = _capture_equals_convert(guest, tmp_path)
    assert result["conversion"]["windows"]["build"] == 19041
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.dmp", "s.dmp", "v.elf"]  # no ELF from capture
    assert guest.status() == "paused"  # capture leaves a stopped guest stopped


def test_kernel_stream_equals_dump_then_convert_kernel(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    """--format kernel: staged as a complete bitmap DMP in an unnamed scratch file, cut afterwards; the result
    equals `dump` + `convert --format kernel` byte for byte and no other file is left."""
    memory = synth_memory(build=19041, cpus=2, ram_mib=256, seed=3)
    guest = make_guest(memory=memory, ram_mib=256)
    guest.qmp("stop")
    result = _capture_equals_convert(guest, tmp_path, "--format", "kernel")
    conversion = result["conversion"]
    assert conversion["format"] == "kernel" and conversion["windows"]["build"] == 19041
    assert 0 < conversion["pages_written"] < conversion["pages_in_runs"], conversion
    assert (tmp_path / "s.dmp").read_bytes()[0x2000:0x2004] == b"SDMP"  # the kernel bitmap summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.dmp", "s.dmp", "v.elf"]  # no scratch, no ELF
    assert guest.status() == "paused"


def test_stream_of_a_guest_whose_vcpus_never_ran(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    """RAM from a generated guest's image, QEMU started with -S: the vCPU notes are reset-state, so Windows
    is found by scanning memory (through the monitor first, then in the stream)."""
    memory = synth_memory(build=19041, cpus=2, ram_mib=256, seed=4)
    guest = make_guest(memory=memory, ram_mib=256, paused=True)
    assert guest.status() == "prelaunch"
    _capture_equals_convert(guest, tmp_path)


def test_stream_of_a_running_guest_keeps_elf_and_resumes(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    guest = make_guest(memory=synth_memory(cpus=1, ram_mib=256, seed=5), ram_mib=256)
    out = tmp_path / "live.dmp"
    result = json.loads(run_wincrash("capture", guest.qmp_path, "-o", out, "--keep-elf", "--json",
                                     check=True).stdout)
    assert result["streamed"] is True and result["dump"]["paused_seconds"] > 0
    assert guest.status() == "running"
    elf = Path(result["elf"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.dmp", "live.elf"]
    assert elf.stat().st_size == result["dump"]["size"] and elf.read_bytes()[:4] == b"\x7fELF"
    # The kept ELF converts to the same DMP: the tee saw the bytes the DMP was made of.
    run_wincrash("convert", elf, "-o", tmp_path / "c.dmp", check=True)
    assert out.read_bytes() == (tmp_path / "c.dmp").read_bytes()


@pytest.mark.parametrize("fmt", ["full", "kernel"])
def test_qemu_dying_mid_stream_leaves_nothing(make_guest, tmp_path: Path, fmt: str) -> None:  # noqa: ANN001
    import subprocess
    import sys
    import time

    guest = make_guest(memory=synth_memory(cpus=1, ram_mib=1024, seed=6), ram_mib=1024)
    proc = subprocess.Popen([sys.executable, "-m", "wincrash", "capture", str(guest.qmp_path), "-o",
                             str(tmp_path / "M.DMP"), "--format", fmt], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while guest.qmp("query-dump")["status"] != "active":  # type: ignore[index]  # the stream has begun
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    guest.proc.kill()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "QEMU" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def _start_capture(guest, out: Path, preexec=None, fmt: str = "full"):  # noqa: ANN001, ANN202
    """A `wincrash capture` child streaming ``guest`` into ``out``, returned once QEMU's dump is active."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "wincrash", "capture", str(guest.qmp_path), "-o", str(out),
                             "--format", fmt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
    deadline = time.monotonic() + 60
    while guest.qmp("query-dump")["status"] != "active":  # type: ignore[index]  # the stream has begun
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.01)
    return proc


def _wait_running(guest, seconds: float = 30) -> str:  # noqa: ANN001
    import time

    deadline = time.monotonic() + seconds
    while guest.status() != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    return guest.status()


@pytest.mark.parametrize("fmt", ["full", "kernel"])
def test_ctrl_c_mid_stream_leaves_nothing_and_resumes(make_guest, tmp_path: Path, fmt: str) -> None:  # noqa: ANN001
    import signal

    guest = make_guest(memory=synth_memory(cpus=1, ram_mib=1024, seed=7), ram_mib=1024)
    assert guest.status() == "running"
    proc = _start_capture(guest, tmp_path / "M.DMP", fmt=fmt)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "cancelled" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
    assert _wait_running(guest) == "running"
    assert guest.qmp("query-dump")["status"] != "active"  # type: ignore[index]  # QEMU's dump was cancelled


def test_disk_filling_mid_stream_leaves_nothing_and_resumes(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    """A file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as ENOSPC would on a full disk) hit
    while pages stream in: one error line, no partial file, the guest runs again."""
    import resource

    guest = make_guest(memory=synth_memory(cpus=1, ram_mib=1024, seed=8), ram_mib=1024)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))  # CPython ignores SIGXFSZ: EFBIG

    proc = _start_capture(guest, tmp_path / "M.DMP", limit)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode not in (0, 130) and err.startswith("wincrash: error:") and "Traceback" not in err, err
    assert "too large" in err.lower() or "no space" in err.lower(), err
    assert list(tmp_path.iterdir()) == []
    assert _wait_running(guest) == "running"
