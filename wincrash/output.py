"""Safe output files: nothing half-written, nothing overwritten by accident, secrets stay private.

Dumps hold passwords and keys, so every file we create is mode 0600. A file is written under a
temporary name in the destination directory and renamed over the final name only when complete;
an exception or Ctrl-C removes the temporary file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from wincrash.errors import WincrashError, describe_os_error


def check_destination(path: Path, force: bool) -> None:
    """Refuse early (before any slow work) when the output cannot or must not be written."""
    if path.is_dir():
        raise WincrashError(f"{path}: is a directory, give a file name")
    if path.exists() and not force:
        raise WincrashError(f"{path}: already exists (use --force to overwrite)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise WincrashError(f"{parent}: directory does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WincrashError(f"{parent}: directory is not writable")


def check_free_space(path: Path, needed: int) -> None:
    """Refuse before writing when the destination filesystem cannot hold ``needed`` bytes."""
    parent = path.parent if str(path.parent) else Path(".")
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise WincrashError(
            f"{parent}: not enough free space: need {needed / 2**20:,.0f} MiB, have {free / 2**20:,.0f} MiB"
        )


def partial_path(path: Path) -> Path:
    """The temporary name atomic_output writes ``path`` under (hidden, next to it, per process)."""
    return path.with_name(f".{path.name}.wincrash-partial-{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[BinaryIO]:
    """Open a private temporary file next to ``path``; rename it to ``path`` only on success."""
    path = Path(path)
    check_destination(path, force)
    tmp = partial_path(path)
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # writers re-read pages they patch
    except OSError as exc:
        raise WincrashError(f"cannot write output: {describe_os_error(exc, path)}") from exc
    done = False
    try:
        with os.fdopen(fd, "r+b") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists() and not force:  # appeared while we were working
            raise WincrashError(f"{path}: already exists (use --force to overwrite)")
        os.replace(tmp, path)
        done = True
    except OSError as exc:
        raise WincrashError(f"cannot write output: {describe_os_error(exc, path)}") from exc
    finally:
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
