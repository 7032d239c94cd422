"""Check results: what was looked at, what was found, and for every problem the exact fix.

A support engineer reads doctor's output top to bottom and copies the fix lines; --json consumers
(runbooks, monitoring) key on ``name`` and ``status``. Checks are plain data so that the code that
gathers facts (host.py, vm.py) stays apart from the code that prints them (render.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from wincrash.errors import EXIT_OK, EXIT_PROBLEMS

Status = Literal["ok", "warn", "fail"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail")


@dataclass
class Check:
    """One verdict. ``fix`` is set exactly when status is not ok (the command or setting that cures it)."""

    name: str  # stable identifier, e.g. "host.nested"
    status: Status
    found: str  # what was seen, in words
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"bad status {self.status!r}")
        if self.status != "ok" and not self.fix:
            raise ValueError(f"{self.name}: a {self.status} check needs a fix")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "found": self.found, "fix": self.fix,
                "details": self.details}


def ok(name: str, found: str, /, **details: Any) -> Check:
    return Check(name, "ok", found, None, details)


def warn(name: str, found: str, fix: str, /, **details: Any) -> Check:
    return Check(name, "warn", found, fix, details)


def fail(name: str, found: str, fix: str, /, **details: Any) -> Check:
    return Check(name, "fail", found, fix, details)


@dataclass
class DoctorReport:
    vm: dict[str, Any] | None  # Target.to_dict() of the VM examined, None for host-only runs
    checks: list[Check]

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    @property
    def exit_code(self) -> int:
        """0 when everything is ok, 1 when doctor ran and found something to fix."""
        return EXIT_OK if all(c.status == "ok" for c in self.checks) else EXIT_PROBLEMS

    def get(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "ok": self.exit_code == EXIT_OK, "counts": self.counts,
                "checks": [c.to_dict() for c in self.checks]}
