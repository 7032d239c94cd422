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
    """Open ``path`` read-only; return the file and its size. ``what`` names it in the errors."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise WincrashError(f"{path}: no such file") from None
    except OSError as exc:
        raise WincrashError(describe_os_error(exc, path)) from None
    if stat.S_ISDIR(st.st_mode):
        raise WincrashError(f"{path}: is a directory, not a {what}")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise WincrashError(f"{path}: permission denied ({permission_hint})") from None
        raise WincrashError(describe_os_error(exc, path)) from None
    size = st.st_size if stat.S_ISREG(st.st_mode) else fh.seek(0, os.SEEK_END)
    return fh, size
