"""VM argument resolution and connection errors: one line, non-zero exit, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from capture_helpers import FakeServer
from helpers import run_wincrash

from wincrash.errors import WincrashError
from wincrash.vm.target import DEFAULT_LIBVIRT_URI, parse_target


def test_tcp_target() -> None:
    t = parse_target("tcp:127.0.0.1:4444")
    assert (t.kind, t.host, t.port, t.qmp_address()) == ("tcp", "127.0.0.1", 4444, ("127.0.0.1", 4444))
    assert parse_target("tcp:[::1]:5").host == "::1"


@pytest.mark.parametrize("bad", ["tcp:host", "tcp:host:99999", "tcp::12"])
def test_bad_tcp_target(bad: str) -> None:
    with pytest.raises(WincrashError):
        parse_target(bad)


def test_domain_name_uses_libvirt() -> None:
    t = parse_target("win11-prod")
    assert (t.kind, t.domain, t.uri) == ("libvirt", "win11-prod", DEFAULT_LIBVIRT_URI)
    assert parse_target("win11", "qemu+ssh://h/system").uri == "qemu+ssh://h/system"


def test_connect_only_for_domains(tmp_path: Path) -> None:
    with pytest.raises(WincrashError, match="--connect"):
        parse_target("tcp:h:1", "qemu:///system")


def test_socket_path(tmp_path: Path) -> None:
    path = tmp_path / "q.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        t = parse_target(str(path))
    assert t.kind == "unix" and t.path == path


def _one_error_line(proc, *needles: str) -> None:  # noqa: ANN001
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wincrash: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["nmi", "dump"])
def test_wrong_socket_path(tmp_path: Path, command: str) -> None:
    _one_error_line(run_wincrash(command, tmp_path / "nope.sock"), "no such socket")


def test_regular_file_is_not_a_socket(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb")
    _one_error_line(run_wincrash("nmi", disk), "regular file, not a QMP socket")


def test_connection_refused(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))  # bound, never listening: what a dead QEMU leaves behind
    try:
        _one_error_line(run_wincrash("nmi", stale), "connection refused")
    finally:
        s.close()


def test_socket_that_is_not_qmp(tmp_path: Path) -> None:
    server = FakeServer(tmp_path / "ssh.sock", b"SSH-2.0-OpenSSH_9.2\r\n")
    try:
        _one_error_line(run_wincrash("nmi", server.path), "not a QMP socket")
    finally:
        server.close()


def test_silent_socket(tmp_path: Path) -> None:
    server = FakeServer(tmp_path / "silent.sock", None)
    try:
        _one_error_line(run_wincrash("dump", server.path, "-o", tmp_path / "x.elf"), "no QMP greeting")
    finally:
        server.close()
    assert not (tmp_path / "x.elf").exists()


def test_unknown_libvirt_domain_or_no_daemon() -> None:
    pytest.importorskip("libvirt", reason="python3-libvirt is not installed")
    proc = run_wincrash("nmi", "no-such-domain-xyz", "--connect", "test:///default")
    _one_error_line(proc, "no libvirt domain named 'no-such-domain-xyz'")
