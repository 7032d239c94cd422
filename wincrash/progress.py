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
def byte_progress(description: str, total: int | None, enabled: bool = True,
                  speed: bool = False) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)``; show a bar (bytes done of ``total``, time left) while the block runs.

    ``total`` is in bytes (None: unknown). ``speed``: also show bytes per second; only for copies
    where every byte advanced was really read and written (a download), never where holes and
    skipped zero pages advance the bar (a dump: "311 GB/s" would be a lie). Nothing is shown when
    ``enabled`` is False or stderr is not a terminal.
    """
    if not enabled or not progress_wanted():
        yield lambda _n: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True)]
    if speed:
        columns.append(TransferSpeedColumn())
    progress = Progress(
        *columns,
        TimeRemainingColumn(),
        console=stderr_console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


LATE_NOTE_SECONDS = 120.0  # off a terminal, a phase this slow gets one "still ..." line


@contextlib.contextmanager
def phase(step: str, late_note: float = LATE_NOTE_SECONDS) -> Iterator[None]:
    """Show that ``step`` (e.g. "starting the libguestfs appliance") is running, with its elapsed seconds.

    On a terminal: a spinner line on stderr, removed at the end. Elsewhere (logs, pipes, CI) nothing,
    unless the step is still running after ``late_note`` seconds: then one line
    ``wincrash: still <step> (N s)`` on stderr, so a slow step is never silent for minutes.
    """
    if progress_wanted():
        from rich.progress import SpinnerColumn, TimeElapsedColumn

        bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                       console=stderr_console, transient=True)
        with bar:
            bar.add_task(step, total=None)
            yield
        return
    import sys
    import threading

    done = threading.Event()

    def note() -> None:
        if not done.wait(late_note):
            print(f"wincrash: still {step} ({late_note:.0f} s)", file=sys.stderr, flush=True)

    watcher = threading.Thread(target=note, name="wincrash-phase", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
