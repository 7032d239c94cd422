"""Helpers for tests (import as `from helpers import ...`; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Real Windows data lives beside the project, never inside it (see ../shared/samples/README.md).
SHARED_SAMPLES = REPO.parent / "shared" / "samples"


def sample_file(relative: str) -> Path:
    """One file of ../shared/samples, or skip the test with a reason."""
    path = SHARED_SAMPLES / relative
    if not path.is_file():
        pytest.skip(f"real sample {relative} not available ({path} is absent)")
    return path


def run_wincrash(*args: str | os.PathLike, check: bool = False, timeout: float = 600,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `wincrash` CLI in a subprocess, as a user would, and capture its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "wincrash", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"wincrash {args} failed ({proc.returncode}): {proc.stderr}")
    return proc
