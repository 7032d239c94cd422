"""Fixtures for the capture tests: real QEMU test guests (TCG)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from wincrash_testkit.testguest.memory import GuestMemory, trivial_memory
from wincrash_testkit.testguest.vm import TestGuest


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: UNIX socket paths must stay under 108 bytes, pytest's tmp_path can be long."""
    path = Path(tempfile.mkdtemp(prefix="wcq-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_guest(short_dir: Path) -> Iterator[Callable[..., TestGuest]]:
    """Start test guests (stopped at teardown); skip when QEMU or binutils are absent."""
    for tool in ("qemu-system-x86_64", "as", "ld", "objcopy"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    started: list[TestGuest] = []

    def make(name: str = "vm", cpus: int = 2, with_os: bool = True, memory: GuestMemory | None = None,
             **kw: object) -> TestGuest:
        if memory is None and with_os:
            memory = trivial_memory(cpus)
        guest = TestGuest(short_dir / name, memory=memory, with_os=with_os, **kw)  # type: ignore[arg-type]
        started.append(guest)
        return guest.start()

    yield make
    for guest in started:
        guest.stop()
