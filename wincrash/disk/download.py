"""Copy one file out of the appliance to the host: streamed, private, verified, never half-written.

libguestfs' download() streams the file in chunks over its protocol socket, so memory stays
constant for a 16 GiB pagefile; its progress events drive our bar. The file is written through
atomic_output (0600, temp name, rename on success) via /dev/fd/N, and its size is checked
against the guest's before the rename.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wincrash.disk.guestfs_backend import guestfs_call
from wincrash.output import atomic_output
from wincrash.progress import byte_progress


@dataclass(frozen=True)
class Downloaded:
    """A file copied to the host: its path, its size in bytes, and the seconds the copy took."""

    path: Path
    size: int
    seconds: float


def download(g: Any, remote: str, local: Path, expected_size: int, force: bool = False,
             progress: bool = True, label: str | None = None, inputs: Iterable[Path] = ()) -> Downloaded:
    """Stream ``remote`` (a path inside the appliance) to ``local`` and verify its size (bytes).

    WincrashError when the copy fails or its size differs from ``expected_size``; the partial file
    is removed (atomic_output). ``progress`` shows a bar on a terminal's stderr. ``local`` must not be
    one of ``inputs`` (the disk images), whatever ``force`` says.
    """
    import guestfs  # noqa: PLC0415 - distribution module, already imported by the backend

    from wincrash.errors import WincrashError

    started = time.monotonic()
    with atomic_output(local, force, inputs) as fh, \
            byte_progress(label or local.name, expected_size, progress, speed=True) as advance:
        done = [0]

        def on_progress(_event: int, _handle: int, _buf: bytes, array: list[int]) -> None:
            # array = [proc_nr, serial, position, total]
            if len(array) >= 4:
                advance(array[2] - done[0])
                done[0] = array[2]

        handle = g.set_event_callback(on_progress, guestfs.EVENT_PROGRESS)
        try:
            guestfs_call(f"cannot copy {remote}", g.download, remote, f"/dev/fd/{fh.fileno()}")
        finally:
            g.delete_event_callback(handle)
        advance(expected_size - done[0])
        size = os.fstat(fh.fileno()).st_size
        if size != expected_size:
            raise WincrashError(f"{local}: copied {size} bytes but the guest file has {expected_size}; "
                                "nothing written")
    return Downloaded(path=local, size=size, seconds=time.monotonic() - started)
