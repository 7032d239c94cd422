"""Opening the user's input files: read-only, with one plain line for every way that fails.

Dumps, memory images and disk images all come through here, so "no such file", "is a directory"
and "permission denied" read the same whichever command the engineer ran.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from wincrash.errors import WincrashError, describe_os_error


def open_input(path: Path, what: str = "dump file", permission_hint: str = "try sudo, or check the file's owner"
               ) -> tuple[BinaryIO, int]:
    """Open ``path`` read-only; return the file and its size in bytes. ``what`` names it in the errors.

    Only regular files and block devices are accepted (a FIFO, socket or character device raises
    WincrashError instead of blocking). Raises WincrashError, one line, for every failure.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise WincrashError(f"{path}: no such file") from None
    except OSError as exc:
        raise WincrashError(describe_os_error(exc, path)) from None
    if stat.S_ISDIR(st.st_mode):
        raise WincrashError(f"{path}: is a directory, not a {what}")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        # A FIFO would block open() until a writer appears, and none can be read twice or seeked.
        raise WincrashError(f"{path}: is a {_special_kind(st.st_mode)}, not a {what} (give a regular file or a "
                            "block device)")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise WincrashError(f"{path}: permission denied ({permission_hint})") from None
        raise WincrashError(describe_os_error(exc, path)) from None
    size = st.st_size if stat.S_ISREG(st.st_mode) else fh.seek(0, os.SEEK_END)
    return fh, size


def _special_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    return "special file"
