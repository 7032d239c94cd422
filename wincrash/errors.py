"""One exception type for everything the user can get wrong.

The CLI turns a WincrashError into one line on stderr and its exit code, so every module raises
this (never prints and exits) and tests can assert on the message.
"""

from __future__ import annotations

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_PROBLEMS = 1  # the command ran, and found problems (e.g. `info` soundness warnings)
EXIT_ERROR = 2  # unreadable input, bad arguments, refused operation
EXIT_INTERRUPTED = 130


class WincrashError(Exception):
    """An error with a message fit for a support engineer and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


def describe_os_error(exc: OSError, path: object | None = None) -> str:
    """A short, plain description of an OSError, naming the file when we know it."""
    reason = exc.strerror or exc.__class__.__name__
    where = path if path is not None else exc.filename
    return f"{where}: {reason.lower()}" if where is not None else reason.lower()
