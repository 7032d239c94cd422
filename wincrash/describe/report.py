"""The result of `wincrash info`: what a file is, what it holds, and what is wrong with it.

Analysis fills a Report; render.py prints it. Keeping the two apart lets `--json` and the text
output show exactly the same facts, and lets other commands (grab-pagefile, convert) reuse the
soundness checks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from wincrash.errors import EXIT_ERROR, EXIT_OK, EXIT_PROBLEMS

FILETIME_EPOCH = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)


def filetime_to_iso(value: int) -> str | None:
    """A Windows FILETIME (100 ns since 1601) as ISO-8601 UTC, or None when it is not a plausible time."""
    if value <= 0 or value >= 0x7FFF_FFFF_FFFF_FFFF:
        return None
    try:
        stamp = FILETIME_EPOCH + dt.timedelta(microseconds=value // 10)
    except OverflowError:
        return None
    if not 1990 <= stamp.year <= 2200:
        return None
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hx(value: int) -> str:
    """Addresses are shown and stored in JSON as 0x-prefixed hex, as WinDbg shows them."""
    return f"0x{value:x}"


def duration_100ns(value: int) -> str:
    """An uptime in 100 ns units as 'Nd HH:MM:SS'."""
    seconds = value // 10_000_000
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}"


@dataclass
class Report:
    """Everything `info` found out about one file."""

    path: str
    size: int
    kind: str  # machine-readable: dmp64, dmp32, pagefile, qemu-elf, elf-core, ...
    title: str  # one line for people
    sections: dict[str, Any] = field(default_factory=dict)  # ordered: name -> dict or list of rows
    problems: list[str] = field(default_factory=list)  # soundness warnings
    notes: list[str] = field(default_factory=list)  # facts worth saying that are not problems
    # What was NOT read, when info looked at the headers only (containers: kdump, libvirt save, LiME,
    # compressed streams): such a file is never called "sound". "" = every soundness check ran.
    unchecked: str = ""

    @property
    def exit_code(self) -> int:
        """0 sound, 1 problems found (2, unreadable, is raised as a WincrashError instead)."""
        return EXIT_PROBLEMS if self.problems else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the report (stable keys, plain types)."""
        return {
            "path": self.path,
            "size": self.size,
            "kind": self.kind,
            "title": self.title,
            **self.sections,
            "problems": self.problems,
            "notes": self.notes,
            "sound": None if self.unchecked and not self.problems else not self.problems,
            "unchecked": self.unchecked or None,
            "exit_code": self.exit_code,
        }


__all__ = ["Report", "filetime_to_iso", "duration_100ns", "hx", "EXIT_ERROR"]
