"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SHARED_SAMPLES

E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `e2e` everything under tests/e2e and every test that starts real QEMU or libguestfs elsewhere.

    The fast tier a developer runs is `pytest -m "not e2e and not slow"`; CI runs everything.
    """
    for item in items:
        if item.path.is_relative_to(E2E) or item.get_closest_marker("qemu") or item.get_closest_marker("guestfs"):
            item.add_marker(pytest.mark.e2e)


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


@pytest.fixture
def libvirt_system():  # noqa: ANN201 - a libvirt.virConnect
    """A connection to the real libvirtd (qemu:///system) that can start QEMU; skip with the reason otherwise."""
    import shutil

    libvirt = pytest.importorskip("libvirt", reason="python3-libvirt is not installed")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:
        pytest.skip(f"no libvirtd at qemu:///system ({exc.get_error_message()}); .ci/run starts one")
    yield conn
    conn.close()


@pytest.fixture
def fake_host(tmp_path: Path):  # noqa: ANN201 - a doctor_helpers.FakeHost
    """A fake host tree (/proc, /sys, /dev files) for doctor's host checks, under tmp_path."""
    from doctor_helpers import FakeHost

    return FakeHost(tmp_path / "root")
