"""Version numbers as tuples, parsed leniently from what kernels, QEMU and firmware print."""

from __future__ import annotations

import re

_NUM_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The first N.N[.N] in ``text`` ("6.1.0-18-amd64" -> (6, 1, 0)); None when there is none."""
    m = _NUM_RE.search(text)
    if not m:
        return None
    return int(m[1]), int(m[2]), int(m[3] or 0)


def show(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
