"""The one way every command shows its result: warnings on stderr, then text or JSON on stdout.

A command's result is a frozen value with ``to_dict()`` (the JSON shape). It may also carry
``warnings`` (sentences; each becomes one ``wincrash: warning: ...`` line on stderr, in both modes,
so that stdout holds only the result) and ``exit_code`` (0 when absent). The text form is drawn by
a per-command printer (``text``) that writes the result to stdout and nothing else.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from wincrash.errors import EXIT_OK


class Result(Protocol):
    """What render() needs from a result: its JSON shape."""

    def to_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Result)


def warn(message: str) -> None:
    """One warning line on stderr: ``wincrash: warning: <message>`` (newlines folded to keep it one line)."""
    print(f"wincrash: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def error_line(message: str) -> str:
    """The single line a failure prints on stderr: ``wincrash: error: <message>``."""
    return f"wincrash: error: {' '.join(message.split())}"


def render(result: R, *, as_json: bool, text: Callable[[R], None]) -> int:
    """Show ``result`` (warnings to stderr; JSON or ``text(result)`` to stdout); return its exit code."""
    warnings: Iterable[str] = getattr(result, "warnings", ()) or ()
    for warning in warnings:
        warn(warning)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        text(result)
    sys.stdout.flush()
    return int(getattr(result, "exit_code", EXIT_OK))
