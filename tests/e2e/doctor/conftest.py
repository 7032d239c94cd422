"""Fixtures for the doctor end-to-end tests: real QEMU (TCG) with chosen -cpu/-device sets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from doctor_helpers import QemuStarter


@pytest.fixture
def qemu() -> Iterator[QemuStarter]:
    starter = QemuStarter()
    yield starter
    starter.stop_all()

