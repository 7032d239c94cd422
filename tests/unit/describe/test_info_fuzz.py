"""Fuzz `info`: whatever the bytes, the result is a Report or a WincrashError, never another exception."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SHARED_SAMPLES, sample_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wincrash.describe import describe_file
from wincrash.errors import WincrashError

MAGICS = [b"PAGEDU64", b"PAGEDUMP", b"\x7fELF\x02\x01\x01\x00", b"MDMP", b"QEVM", b"KDUMP   "]


def _seed_headers() -> list[bytes]:
    seeds = []
    path = SHARED_SAMPLES / "real" / "triage_x64.dmp"
    if path.is_file():
        with open(path, "rb") as fh:
            seeds.append(fh.read(0x20000))
    return seeds


SEEDS = _seed_headers()


@st.composite
def inputs(draw) -> bytes:
    choice = draw(st.integers(0, 2))
    if choice == 0 or not SEEDS:
        magic = draw(st.sampled_from(MAGICS))
        return magic + draw(st.binary(max_size=0x3000))
    if choice == 1:
        return draw(st.binary(max_size=64))
    base = bytearray(draw(st.sampled_from(SEEDS)))
    cut = draw(st.integers(8, len(base)))
    for _ in range(draw(st.integers(1, 16))):
        pos = draw(st.integers(0, min(cut, 0x2100) - 1))
        base[pos] = draw(st.integers(0, 255))
    return bytes(base[:cut])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "input.bin"


def _nothing_escapes(fuzz_file: Path, data: bytes) -> None:
    fuzz_file.write_bytes(data)
    try:
        report = describe_file(fuzz_file)
    except WincrashError as exc:
        assert exc.exit_code == 2 and "\n" not in str(exc)
    else:
        assert report.exit_code in (0, 1)
        report.to_dict()


_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)


@settings(max_examples=500, **_SETTINGS)
@given(data=inputs())
def test_nothing_escapes(fuzz_file, data):
    """The fast tier's share of the fuzzing (500 inputs, under a second)."""
    _nothing_escapes(fuzz_file, data)


@pytest.mark.slow
@settings(max_examples=10_000, **_SETTINGS)
@given(data=inputs())
def test_nothing_escapes_10000(fuzz_file, data):
    """The full run (10,000 inputs, about 15 s of CPU): CI runs it with the slow tests."""
    _nothing_escapes(fuzz_file, data)


def test_fuzz_seeds_include_a_real_header():
    sample_file("real/triage_x64.dmp")
    assert SEEDS and SEEDS[0][:8] == b"PAGEDU64"
    assert os.path.getsize(sample_file("real/triage_x64.dmp")) > len(SEEDS[0])
