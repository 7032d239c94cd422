"""Open a VM's disks in a libguestfs appliance: read-only for `grab-pagefile`, writable for `prepare`.

Read-only drives are opened by libguestfs through a temporary qcow2 overlay, so the input
images stay byte-identical even though the appliance's kernel mounts them. The `guestfs` Python
module comes from the distribution (python3-guestfs), not from PyPI, so it is imported lazily and
its absence is a one-line error.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wincrash.disk.image import ImageInfo, explain_in_use
from wincrash.errors import WincrashError


@dataclass
class Appliance:
    """A launched libguestfs handle and what it took to get there."""

    g: Any  # guestfs.GuestFS
    images: list[ImageInfo]
    readonly: bool
    launch_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def _import_guestfs() -> Any:
    try:
        import guestfs  # noqa: PLC0415 - optional, distribution-provided
    except ImportError:
        raise WincrashError("the libguestfs Python module is missing: install python3-guestfs "
                            "(Debian/Ubuntu) or python3-libguestfs (Fedora) and use a Python that sees it "
                            "(a venv needs --system-site-packages)") from None
    return guestfs


def _clean_guestfs_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text.removeprefix("libguestfs: error: ")


@contextlib.contextmanager
def open_appliance(images: list[ImageInfo], readonly: bool = True, force_share: bool = False) -> Iterator[Appliance]:
    """Launch one appliance with every image attached (sda, sdb, ... in the given order).

    Refuses images that a running VM has locked, unless ``force_share`` (read-only only): a
    writer must never touch a disk in use, and a reader must know the data may be torn.
    """
    for info in images:
        if info.in_use and (not force_share or not readonly):
            if readonly:
                raise WincrashError(explain_in_use(info.path))
            raise WincrashError(f"{info.path}: in use by a running VM (QEMU holds its image lock); "
                                "shut the VM down first: changing a disk under a running guest corrupts it")
    guestfs = _import_guestfs()
    # libvirt's backend needs a running libvirtd; the direct backend needs only qemu.
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        for info in images:
            g.add_drive_opts(str(info.path), readonly=readonly, format=info.format)
        started = time.monotonic()
        try:
            g.launch()
        except RuntimeError as exc:
            raise WincrashError(f"cannot start the libguestfs appliance: {_clean_guestfs_error(exc)}") from None
        yield Appliance(g=g, images=images, readonly=readonly, launch_seconds=time.monotonic() - started)
        if not readonly:
            # Flush the guest's writes to the images before we report success.
            g.umount_all()
            g.sync()
        g.shutdown()
    finally:
        g.close()


def guestfs_call(what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a libguestfs API and turn its RuntimeError into a one-line WincrashError naming ``what``."""
    try:
        return func(*args, **kwargs)
    except RuntimeError as exc:
        raise WincrashError(f"{what}: {_clean_guestfs_error(exc)}") from None
