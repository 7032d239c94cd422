"""Replay every input the fuzz suite ever failed on (tests/fuzz_regressions/) through the bounded worker."""

from __future__ import annotations

import os
import random
import shutil
import struct
from pathlib import Path

import pytest
from fuzzing import Outcome, Pool
from helpers import REPO

CASES = sorted(p for p in (REPO / "tests" / "fuzz_regressions").iterdir() if p.name != "README.md")


def _generated(tmp_path: Path) -> list[Path]:
    """Generated regressions: LiME ranges past 2^64 and with end before start, a damaged QEVM stream."""
    out = []
    for name, start, end in (("lime-huge.lime", 0x1000, (1 << 64) - 1), ("lime-back.lime", 0x2000, 0x1000)):
        path = tmp_path / name
        path.write_bytes(struct.pack("<IIQQQ", 0x4C694D45, 1, start, end, 0) + bytes(0x1000))
        out.append(path)
    rng = random.Random(13)
    for i in range(4):
        path = tmp_path / f"qevm-{i}.bin"
        path.write_bytes(b"QEVM\0\0\0\3" + bytes(rng.randrange(256) for _ in range(rng.randrange(16, 4096))))
        out.append(path)
    return out


@pytest.mark.parametrize("fmt", ["full", "bitmap", "kernel"])
def test_regressions_stay_fixed(tmp_path, fmt):
    paths = []
    for case in CASES:
        shutil.copy(case, tmp_path / case.name)
        paths.append(tmp_path / case.name)
    paths += _generated(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "testkit"),
                                                        os.environ.get("PYTHONPATH", "")])}
    outcome = Outcome()
    Pool(1, env).run(iter([(p, fmt, "convert", p.name) for p in paths]), outcome)
    assert outcome.ran == len(paths) >= 7
    assert not outcome.failures, "\n".join(f"{f.name}: {f.why}" for f in outcome.failures)
