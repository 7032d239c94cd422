"""Outputs never replace an input, never outlive a killed process, and are checked before any slow step."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import REPO, run_wincrash

from wincrash import output
from wincrash.errors import WincrashError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
def test_convert_never_writes_over_its_input_even_with_force(tmp_path: Path, spelling: str) -> None:
    src = tmp_path / "t" / "same.elf"
    src.parent.mkdir()
    src.write_bytes(os.urandom(64 << 10))
    before = _sha(src)
    out = {"same": src, "dot": tmp_path / "t" / "." / "same.elf", "symlink": tmp_path / "link.elf",
           "hardlink": tmp_path / "hard.elf"}[spelling]
    if spelling == "symlink":
        out.symlink_to(src)
    elif spelling == "hardlink":
        os.link(src, out)
    proc = run_wincrash("convert", src, "-o", out, "--force")
    assert proc.returncode == 2, proc.stderr
    assert "wincrash: error:" in proc.stderr and "the output is the input file" in proc.stderr
    assert _sha(src) == before


def test_atomic_output_is_nameless_until_complete(tmp_path: Path) -> None:
    out = tmp_path / "o.dmp"
    with output.atomic_output(out) as fh:
        fh.write(b"x" * 4096)
        assert sorted(os.listdir(tmp_path)) == []  # O_TMPFILE: nothing to leave behind on SIGKILL
    assert out.read_bytes() == b"x" * 4096 and out.stat().st_mode & 0o777 == 0o600
    with pytest.raises(WincrashError, match="already exists"), output.atomic_output(out) as fh:
        pass
    with output.atomic_output(out, force=True) as fh:
        fh.write(b"new")
    assert out.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["o.dmp"]


def test_atomic_output_without_o_tmpfile_uses_a_hidden_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    out = tmp_path / "o.dmp"
    with pytest.raises(RuntimeError), output.atomic_output(out) as fh:
        fh.write(b"partial")
        assert os.listdir(tmp_path) == [f".o.dmp.wincrash-partial-{os.getpid()}"]
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with output.atomic_output(out) as fh:
        fh.write(b"done")
    assert os.listdir(tmp_path) == ["o.dmp"] and out.read_bytes() == b"done"


@pytest.mark.parametrize("tmpfile", [True, False])
def test_replacement_takes_the_place_of_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   tmpfile: bool) -> None:
    if not tmpfile:
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    out = tmp_path / "s.dmp"
    with output.atomic_output(out) as fh:
        fh.write(b"streamed")
        number = fh.fileno()
        with output.replacement(fh, out) as new:
            new.write(b"rewritten")
        assert fh.fileno() == number
    assert out.read_bytes() == b"rewritten" and os.listdir(tmp_path) == ["s.dmp"]


def test_stale_partial_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f".x.dmp.wincrash-partial-{_dead_pid()}"
    alive = tmp_path / f".y.dmp.wincrash-partial-{os.getppid()}"
    other = tmp_path / ".notes.txt"
    for path in (dead, alive, other):
        path.write_bytes(b"old")
    with output.atomic_output(tmp_path / "z.dmp") as fh:
        fh.write(b"z")
    assert not dead.exists() and alive.exists() and other.exists()


def test_sticky_folder_with_another_users_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    theirs = folder / "out.dmp"
    theirs.write_bytes(b"theirs")
    if os.geteuid() == 0:  # root may replace anything: pretend to be someone else for the check
        monkeypatch.setattr(os, "geteuid", lambda: 4242)
        if theirs.stat().st_uid == 4242:
            pytest.skip("the file belongs to the pretend user")
    with pytest.raises(WincrashError, match="sticky"):
        output.check_destination(theirs, force=True)


def test_bad_values_are_one_line_before_any_work(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    cases = [
        (("prepare", disk, "--ram", "9" * 400), "--ram"),
        (("prepare", disk, "--ram", "0"), "--ram"),
        (("grab-pagefile", disk, "--recovery-key", "1234", "-o", tmp_path / "never"), "--recovery-key"),
        (("convert", disk, "--profile", "win10x64_1904"), "did you mean Win10x64_19045?"),
        (("capture", "/nonexistent.sock", "--crash", "--format", "bogus"), "--format bogus"),
        (("capture", "/nonexistent.sock", "--crash", "-o", tmp_path / "no" / "x.dmp"), "does not exist"),
        (("capture", "/nonexistent.sock", "-o", tmp_path / "x.elf", "--keep-elf"), "same name"),
        (("dump", "/nonexistent.sock", "-o", tmp_path / "no" / "x.elf"), "does not exist"),
    ]
    for args, words in cases:
        proc = run_wincrash(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("wincrash: error:"), (args, proc)
        assert words in lines[0], (args, lines[0])
    assert not (tmp_path / "never").exists()


def test_grab_pagefile_refuses_a_bad_output_folder_before_the_appliance(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_wincrash("grab-pagefile", disk, "-o", blocker / "sub", timeout=60)
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr, proc.stderr
    assert not (blocker / "sub").exists()


def test_sigterm_and_sighup_stop_a_command_like_ctrl_c(tmp_path: Path) -> None:
    """A `wincrash` run busy in Python code gets SIGTERM / SIGHUP: "wincrash: interrupted", exit 143 / 129."""
    for sig, code in ((15, 143), (1, 129)):
        script = ("import os, signal, sys, time; sys.argv = ['wincrash', 'info', '/dev/null'];"
                  "from wincrash import cli;"
                  f"cli.app = lambda **kw: (os.kill(os.getpid(), {sig}), time.sleep(5));"
                  "cli.main()")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=30)
        assert proc.returncode == code, proc.stderr
        assert proc.stderr.strip() == "wincrash: interrupted", proc.stderr


def test_tests_keep_only_failed_tmp_folders() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["tmp_path_retention_policy"] == "failed"


def test_readme_synopses_list_every_flag() -> None:
    """Each `### wincrash CMD ...` synopsis of the README names every option `CMD --help` shows."""
    import re

    readme = (REPO / "README.md").read_text()
    synopses = dict(re.findall(r"^### `wincrash ([a-z-]+) ([^`]*)`", readme, re.M))
    assert set(synopses) == {"info", "convert", "nmi", "dump", "capture", "doctor", "grab-pagefile", "prepare"}
    short = {"--output": "-o", "--output-dir": "-o", "--connect": "--connect"}
    for command, synopsis in synopses.items():
        proc = run_wincrash(command, "--help", env={"COLUMNS": "300"})
        flags = set(re.findall(r"^\s*│?\s*(--[a-z-]+)", proc.stdout, re.M)) - {"--help"}
        assert "--json" in flags, (command, proc.stdout)
        missing = [f for f in flags if f not in synopsis and short.get(f, f) not in synopsis]
        assert not missing, (command, missing)


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-dev-null", "dash"])
def test_output_that_is_not_a_regular_file_is_refused_even_with_force(tmp_path: Path, kind: str) -> None:
    """`-o /dev/null --force` as root used to replace the host's /dev/null with a dump (a reviewer hit it)."""
    src = tmp_path / "in.raw"
    src.write_bytes(os.urandom(64 << 10))
    if kind == "fifo":
        out = tmp_path / "out.fifo"
        os.mkfifo(out)
    elif kind == "symlink-to-dev-null":
        out = tmp_path / "null.dmp"
        out.symlink_to(os.devnull)
    else:
        out = Path("-")
    proc = subprocess.run([sys.executable, "-m", "wincrash", "convert", str(src), "-o", str(out), "--force"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("wincrash: error:")
    assert "regular file" in proc.stderr or "standard output" in proc.stderr
    assert Path(os.devnull).is_char_device()
    if kind == "fifo":
        assert out.is_fifo()
    assert not (tmp_path / "-").exists()


def test_info_never_calls_an_unread_format_sound(tmp_path: Path) -> None:
    """A QEMU migration stream is recognised by its signature only: `info` says what it did not check."""
    path = tmp_path / "vm.qevm"
    path.write_bytes(b"QEVM\0\0\0\3" + os.urandom(4096))
    proc = run_wincrash("info", path, "--json")
    report = json.loads(proc.stdout)
    assert report["sound"] is None and report["unchecked"]
