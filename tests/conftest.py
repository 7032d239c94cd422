"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SHARED_SAMPLES


@pytest.fixture(scope="session")
def shared_samples() -> Path:
    """The ../shared/samples folder; tests that need it skip with a reason when it is absent."""
    if not SHARED_SAMPLES.is_dir():
        pytest.skip(f"real Windows samples not available ({SHARED_SAMPLES} is absent)")
    return SHARED_SAMPLES


@pytest.fixture(scope="session")
def disks(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a disk_images.DiskSet
    """The libguestfs test disk images (tests/disk_images.py), built once per session for every suite."""
    from disk_images import build_disks

    return build_disks(tmp_path_factory)


@pytest.fixture(scope="session", name="sha256")
def sha256_fixture():  # noqa: ANN201
    """sha256(path) -> hex digest, to prove input images are unchanged."""
    from disk_images import sha256

    return sha256
