"""The CLI's door: usage errors are one line, choices are enums typer checks, --help is clean, results
render the same way everywhere (warnings on stderr, text or JSON on stdout, the result's exit code)."""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import run_wincrash

from wincrash.choices import CrashDumpKind, DmpFormat, Profile, QemuDumpFormat
from wincrash.convert.pipeline import FORMATS
from wincrash.disk.crashcontrol import DUMP_TYPES, backup_path
from wincrash.errors import WincrashError
from wincrash.render import render
from wincrash.vm.guest_memory import DUMP_FORMATS
from wincrash.windows.profiles import profile_names

COMMANDS = ["info", "nmi", "dump", "capture", "convert", "grab-pagefile", "prepare", "doctor"]


def _one_error_line(proc: Any, *words: str) -> str:  # noqa: ANN401 - CompletedProcess
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wincrash: error: "), proc.stderr
    assert "Usage:" not in proc.stderr and "╭" not in proc.stderr and "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a dump\n")
    _one_error_line(run_wincrash("convert", "/nonexistent"), "/nonexistent: no such file")
    _one_error_line(run_wincrash("convert", text, "--format", "bogus"), "--format bogus", "full, bitmap")
    _one_error_line(run_wincrash("convert", text, "--profile", "Win99"), "--profile Win99", "Win10x64")
    _one_error_line(run_wincrash("convert", tmp_path), "is a directory")
    _one_error_line(run_wincrash("prepare"), "DISK", "wincrash prepare --help")
    _one_error_line(run_wincrash("prepare", text, "--dump", "huge"), "--dump huge", "complete, kernel")
    _one_error_line(run_wincrash("dump", "vm.sock", "--format", "lzo"), "--format lzo", "kdump-zlib")
    _one_error_line(run_wincrash("nmi", "vm.sock", "--wait", "0"), "--wait")
    _one_error_line(run_wincrash("nmi", "vm.sock", "--wait", "soon"), "--wait")
    _one_error_line(run_wincrash("info", text, "--bogus"), "--bogus")
    _one_error_line(run_wincrash("no-such-command"), "no-such-command")


def test_choices_are_case_insensitive(tmp_path: Path) -> None:
    """`--format BITMAP` and `--profile win10X64` pass the door: the error is about the input, not the option."""
    text = tmp_path / "notes.txt"
    text.write_bytes(b"\0" * 8192)
    proc = run_wincrash("convert", text, "--format", "BITMAP", "--profile", "win10X64", "-o", tmp_path / "o.dmp")
    line = _one_error_line(proc)
    assert "--format" not in line and "--profile" not in line


def test_choices_mirror_the_domain_tables() -> None:
    assert [f.value for f in DmpFormat] == list(FORMATS)
    assert [f.value for f in QemuDumpFormat] == list(DUMP_FORMATS)
    assert [k.value for k in CrashDumpKind] == list(DUMP_TYPES)
    assert [p.value for p in Profile] == ["auto", *profile_names()]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_clean_metavars(command: str) -> None:
    proc = run_wincrash(command, "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert not re.search(r"<(bool|path|str|int|float|list\[[^>]*|[a-z]+\|[^>]*)>", proc.stdout), proc.stdout
    usage = next(line for line in proc.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage and usage.split("Usage:")[1].split()[0] == "wincrash", usage


def test_prepare_backup_goes_next_to_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = tmp_path / "images"
    images.mkdir()
    disk = images / "disk.qcow2"
    disk.write_bytes(b"")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert backup_path(Path("../images/disk.qcow2"), None, "20260101-000000") == \
        images / "disk.qcow2.SYSTEM.20260101-000000.orig"
    chosen = tmp_path / "backups"
    chosen.mkdir()
    assert backup_path(disk, chosen, "s").parent == chosen
    with pytest.raises(WincrashError, match="--backup-dir"):
        backup_path(disk, tmp_path / "missing", "s")
    if os.geteuid() != 0:
        images.chmod(0o555)
        try:
            with pytest.raises(WincrashError, match="not writable.*--backup-dir"):
                backup_path(disk, None, "s")
        finally:
            images.chmod(0o755)


@dataclass(frozen=True)
class _Result:
    warnings: tuple[str, ...]
    exit_code: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"answer": 42, "warnings": list(self.warnings)}


def test_render_puts_warnings_on_stderr_and_returns_the_exit_code() -> None:
    result = _Result(warnings=("the pagefile\nis small", "second"))
    for as_json in (False, True):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = render(result, as_json=as_json, text=lambda r: print(f"answer {r.to_dict()['answer']}"))
        assert code == 1
        assert err.getvalue().splitlines() == ["wincrash: warning: the pagefile is small", "wincrash: warning: second"]
        if as_json:
            assert json.loads(out.getvalue())["answer"] == 42
        else:
            assert out.getvalue() == "answer 42\n"
