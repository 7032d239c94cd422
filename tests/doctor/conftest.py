"""Fixtures for the doctor tests: real QEMU (TCG) with chosen -cpu/-device sets, and fake host trees."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# doctor_helpers.py sits beside this file; tests import it by its (unique) name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from doctor_helpers import FakeHost, QemuStarter  # noqa: E402


@pytest.fixture
def qemu() -> Iterator[QemuStarter]:
    starter = QemuStarter()
    yield starter
    starter.stop_all()


@pytest.fixture
def fake_host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path / "root")
