"""Fixtures for the runbook tests: test guests (the disk images come from the `disks` session fixture
in tests/conftest.py, shared with tests/disk, so they are built once per run)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: UNIX socket paths must stay under 108 bytes, pytest's tmp_path can be long."""
    path = Path(tempfile.mkdtemp(prefix="wcr-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_guest(short_dir: Path) -> Iterator[Callable[..., object]]:
    """Start the synthetic Windows test guest in real QEMU (TCG); stopped at teardown."""
    for tool in ("qemu-system-x86_64", "as", "ld", "objcopy"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    from wincrash_testkit.testguest.memory import synth_memory
    from wincrash_testkit.testguest.vm import TestGuest

    started: list[TestGuest] = []

    def make(name: str = "vm", cpus: int = 2, extra_args: list[str] | None = None) -> TestGuest:
        guest = TestGuest(short_dir / name, memory=synth_memory(cpus=cpus, ram_mib=256), ram_mib=256,
                          extra_args=extra_args)
        started.append(guest)
        return guest.start()

    yield make
    for guest in started:
        guest.stop()
