"""Fuzz every input path through `info` and `convert` in-process, each input under a deadline and RLIMIT_AS.

Failures are kept (tests/fuzz_regressions/ holds every one that was ever found and fixed, replayed by
test_fuzz_regressions.py); the failing inputs of a run stay in pytest's tmp folder and are named in the message.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from fuzzing import Outcome, Pool, jobs
from helpers import REPO


def _fuzz(seeds, tmp_path, count: int, seed: int) -> Outcome:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "testkit"),
                                                        os.environ.get("PYTHONPATH", "")])}
    outcome = Outcome()
    Pool(max(1, min(4, os.cpu_count() or 1)), env).run(jobs(seeds, count, tmp_path, random.Random(seed)), outcome)
    return outcome


def _report(outcome: Outcome) -> str:
    return "\n\n".join(f"{f.name} ({f.data_path}):\n{f.why}" for f in outcome.failures[:5])


def test_fuzz_fast(fuzz_seeds, tmp_path):
    """The fast tier's share: 200 inputs over every seed."""
    outcome = _fuzz(fuzz_seeds, tmp_path, 200, seed=int(time.strftime("%j")))
    assert outcome.ran == 200
    assert not outcome.failures, _report(outcome)


@pytest.mark.slow
def test_fuzz_10000(fuzz_seeds, tmp_path):
    """CI's run: 10,000 inputs (a few minutes on 2 cores)."""
    outcome = _fuzz(fuzz_seeds, tmp_path, 10_000, seed=int(time.time()))
    assert outcome.ran == 10_000
    assert not outcome.failures, _report(outcome)
