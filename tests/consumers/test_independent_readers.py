"""Converted dumps analysed by UNMODIFIED MemProcFS and volatility3, as they would analyse a real dump.

For each build both readers have symbols for (MemProcFS: built-in info.db, offline; volatility3: the ISF
files of ../shared/samples/isf) and each output format, both readers must list the generator's processes
(pid, name, parent) and modules (name, base, size), and report its kernel base and build; MemProcFS's PFN
database must be the PFN array base (MmPfnDatabase's value). See tests/readers.py for what each reader needs.

The generated guests are realistic enough for both readers as they are for a real dump (a dozen and more
processes with their own PML4s, >= 6 kernel PML4 regions, the System PML4 low in RAM, POOLCODE in ntoskrnl,
the PFN database mapped; see wincrash_testkit.synth.state and .processes), and the converter writes what
they read (PfnDataBase value, complete bitmaps, kernel dumps). Issue 10, section "Independent readers in
the test suite".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, SHARED_SAMPLES, run_wincrash
from readers import ReaderView, memprocfs_available, memprocfs_view, volatility_symbols, volatility_view

pytestmark = pytest.mark.slow

BUILDS = (19041, 17763, 14393)
FORMATS = ("full", "bitmap", "kernel")



CASES = [pytest.param(reader, build, fmt, id=f"{reader}-{build}-{fmt}")
         for reader in ("memprocfs", "volatility3") for build in BUILDS for fmt in FORMATS]
PFN_CASES = [pytest.param(build, fmt, id=f"memprocfs-{build}-{fmt}") for build in BUILDS for fmt in FORMATS]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a callable (build, fmt) -> (dmp, truth)
    """Generate one guest per build (scripts/make_guest.py) and convert it once per format (wincrash convert)."""
    root = tmp_path_factory.mktemp("readers")
    cache: dict[tuple[int, str], tuple[Path, dict]] = {}

    def get(build: int, fmt: str) -> tuple[Path, dict]:
        if (build, fmt) not in cache:
            elf, truth = root / f"g{build}.elf", root / f"g{build}.json"
            if not elf.exists():
                proc = run_wincrash_script("scripts/make_guest.py", "--build", str(build), "--cpus", "2",
                                           "--ram-mib", "512", "--seed", "1", "--crashed",
                                           "--out", str(elf), "--truth", str(truth))
                assert proc.returncode == 0, proc.stderr
            dmp = root / f"g{build}.{fmt}.dmp"
            run_wincrash("convert", elf, "-o", dmp, "--format", fmt, check=True)
            cache[build, fmt] = dmp, json.loads(truth.read_text())
        return cache[build, fmt]

    return get


def run_wincrash_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a developer script of the repository (e.g. scripts/make_guest.py) with this interpreter."""
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def vol_symbols(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """../shared/samples/isf arranged as volatility3's symbols/windows/ntkrnlmp.pdb/<GUID><AGE>.json.xz."""
    isf = SHARED_SAMPLES / "isf"
    try:
        return volatility_symbols(isf, tmp_path_factory.mktemp("volsym"))
    except FileNotFoundError as exc:
        pytest.skip(f"volatility3 symbols not available: {exc}")


def assert_matches_truth(view: ReaderView, truth: dict) -> None:
    """Everything a reader reports must be the generator's ground truth."""
    assert view.build == truth["build"]
    assert view.kernel_base == truth["kernel"]["base"]
    # EPROCESS.ImageFileName: Windows keeps the first 14 characters ("fontdrvhost.ex"), as every reader shows.
    expected_procs = {(p["pid"], p["image_file_name"], p["ppid"]) for p in truth["processes"]}
    assert {(p.pid, p.name, p.ppid) for p in view.processes} == expected_procs
    expected_mods = {(m["name"], m["base"], m["size"]) for m in truth["modules"]}
    assert {(m.name, m.base, m.size) for m in view.modules} == expected_mods


@pytest.fixture(scope="module")
def memprocfs_of(converted):  # noqa: ANN001, ANN201 - a callable (build, fmt) -> ReaderView
    """MemProcFS's view of each converted dump, run once per dump (its failures are not cached)."""
    cache: dict[tuple[int, str], ReaderView] = {}

    def get(build: int, fmt: str) -> ReaderView:
        if not memprocfs_available():
            pytest.skip("the PyPI package memprocfs is not installed")
        if (build, fmt) not in cache:
            cache[build, fmt] = memprocfs_view(converted(build, fmt)[0])
        return cache[build, fmt]

    return get


@pytest.mark.parametrize(("reader", "build", "fmt"), CASES)
def test_reader_sees_the_generated_guest(reader: str, build: int, fmt: str, converted, memprocfs_of,  # noqa: ANN001
                                         request) -> None:  # noqa: ANN001
    if reader == "memprocfs":
        assert_matches_truth(memprocfs_of(build, fmt), converted(build, fmt)[1])
    else:
        dmp, truth = converted(build, fmt)
        assert_matches_truth(volatility_view(dmp, request.getfixturevalue("vol_symbols")), truth)


@pytest.mark.parametrize(("build", "fmt"), PFN_CASES)
def test_memprocfs_pfn_database_is_the_value(build: int, fmt: str, converted, memprocfs_of) -> None:  # noqa: ANN001
    view = memprocfs_of(build, fmt)
    assert view.pfn_database == converted(build, fmt)[1]["mm_pfn_database"]["value"], \
        "PfnDataBase must be the PFN array base"
