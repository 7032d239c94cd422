"""Progress bars on stderr for long work (copies, dumps, downloads): the one output domain code makes.

Bars go to stderr so that ``--json`` output on stdout stays clean, and only when stderr is a
terminal, so logs, pipes and CI output never fill with bar redraws.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stderr_console = Console(stderr=True)


def progress_wanted() -> bool:
    """True when stderr is a terminal: the default for every ``progress`` argument left as None."""
    return stderr_console.is_terminal


@contextlib.contextmanager
def byte_progress(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)``; show a bar with throughput while the block runs.

    ``total`` is in bytes (None: unknown). Nothing is shown when ``enabled`` is False or stderr is
    not a terminal.
    """
    if not enabled or not progress_wanted():
        yield lambda _n: None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
