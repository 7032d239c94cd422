"""Scratch files for inputs whose pages are not stored plainly (kdump pages, compressed streams).

The writers copy guest pages kernel-side from a file (copy_file_range), so an input whose pages are
compressed is first decoded once into an unnamed temporary file: sparse (all-zero pages are holes),
next to the output, after a free-space check. The file has no name (O_TMPFILE), so nothing is left
behind when convert ends, fails or is killed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from wincrash.errors import WincrashError
from wincrash.output import check_free_space

MARGIN = 64 << 20  # bytes kept free on top of what the decoded pages need


def scratch_file(directory: Path | None, needed: int) -> BinaryIO:
    """An unnamed read/write temporary file in ``directory`` (default: the system's temp directory).

    ``needed`` is the most bytes that will be written (decoded non-zero data); raises WincrashError
    when the filesystem has less free.
    """
    where = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    check_free_space(where / "scratch", needed + MARGIN)
    try:
        return tempfile.TemporaryFile(dir=where)  # noqa: SIM115 - closed with the source
    except OSError as exc:
        raise WincrashError(f"{where}: cannot create a temporary file to decode the input ({exc.strerror})") from None


def fd_path(fh: BinaryIO) -> Path:
    """A path that reopens the (unnamed) file ``fh``: for libraries that take a path (volatility3)."""
    return Path(f"/proc/self/fd/{fh.fileno()}")


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int, where: Path | None) -> None:
    """os.pwrite until everything is written; ENOSPC becomes one plain line."""
    view = memoryview(data)
    while view:
        try:
            n = os.pwrite(fd, view, offset)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise WincrashError(f"{where or tempfile.gettempdir()}: no space left while decoding the input "
                                    "(free some space next to the output, or write the output elsewhere)") from None
            raise
        view = view[n:]
        offset += n
