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
