"""Import-time layout checks for construct definitions (kdmp-parser's static_asserts, in Python).

A structure whose size or field offset drifts from the documented layout must stop the program at
import, not produce a dump WinDbg misreads. The checks raise even under `python -O` (no `assert`).
"""

from __future__ import annotations

from collections.abc import Mapping

from construct import Construct


class LayoutError(AssertionError):
    """A construct definition disagrees with the documented size or offset of one of its fields."""


def offset_of(struct: Construct, name: str) -> int:
    """Byte offset of the top-level field ``name`` of a fixed-size Struct; KeyError when absent."""
    total = 0
    for sub in struct.subcons:
        if sub.name == name:
            return total
        total += sub.sizeof()
    raise KeyError(name)


def check_layout(label: str, struct: Construct, size: int, offsets: Mapping[str, int] | None = None) -> None:
    """Raise LayoutError unless ``struct`` is ``size`` bytes and each named field sits at its offset.

    ``label`` names the structure in the error; ``offsets`` maps top-level field names to byte
    offsets, as the defining header or spec gives them.
    """
    actual = struct.sizeof()
    if actual != size:
        raise LayoutError(f"{label}: {actual:#x} bytes, expected {size:#x}")
    for name, want in (offsets or {}).items():
        got = offset_of(struct, name)
        if got != want:
            raise LayoutError(f"{label}.{name} at {got:#x}, expected {want:#x}")
