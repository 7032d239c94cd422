"""Open a VM's disks in a libguestfs appliance: read-only for `grab-pagefile`, writable for `prepare`.

Read-only drives are opened by libguestfs through a temporary qcow2 overlay, so the input
images stay byte-identical even though the appliance's kernel mounts them. The `guestfs` Python
module comes from the distribution (python3-guestfs), not from PyPI, so it is imported lazily and
its absence is a one-line error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wincrash.disk.image import ImageInfo, explain_in_use
from wincrash.errors import WincrashError
from wincrash.progress import phase


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


TIMEOUT_ENV = "WINCRASH_APPLIANCE_TIMEOUT"
DEFAULT_LAUNCH_TIMEOUT = 600.0  # seconds: TCG on a loaded host takes 1-3 minutes; a hung KVM takes forever


def launch_timeout() -> float:
    """Seconds the appliance may take to start: $WINCRASH_APPLIANCE_TIMEOUT, else 600. WincrashError when bad."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_LAUNCH_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise WincrashError(f"{TIMEOUT_ENV}={text}: give a positive number of seconds")
    return value


def choose_accelerator() -> str | None:
    """Run the appliance under TCG (LIBGUESTFS_BACKEND_SETTINGS=force_tcg) when KVM cannot run guests here
    (wincrash.kvm), with a note on stderr; return that note, or None when KVM is fine or the user chose
    the settings already."""
    if os.environ.get("LIBGUESTFS_BACKEND_SETTINGS") is not None:
        return None
    from wincrash.kvm import kvm_status  # noqa: PLC0415
    from wincrash.render import warn  # noqa: PLC0415

    status = kvm_status()
    if status.usable:
        return None
    os.environ["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    note = (f"KVM cannot run guests here ({status.reason}): the libguestfs appliance runs under TCG, "
            "which takes a minute or more")
    if Path("/dev/kvm").exists():
        warn(note)  # with no /dev/kvm at all libguestfs picks TCG itself: nothing to say
    return note


def _qemu_children() -> list[int]:
    """PIDs of our child processes (and their children) whose command is qemu-*: the appliance."""
    found, parents = [], {os.getpid()}
    for _ in range(3):  # libguestfs may fork a recovery process between us and QEMU
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat_text = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat_text[stat_text.find("(") + 1:stat_text.rfind(")")]
            ppid = int(stat_text[stat_text.rfind(")") + 2:].split()[1])
            if ppid in parents:
                parents.add(int(entry.name))
                if comm.startswith("qemu") and int(entry.name) not in found:
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[threading.Event]:
    """After ``seconds``, kill the appliance's QEMU (so that a blocked launch() returns) and set the event."""
    expired, done = threading.Event(), threading.Event()

    def watch() -> None:
        if not done.wait(seconds):
            expired.set()
            for pid in _qemu_children():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=watch, name="wincrash-appliance-watchdog", daemon=True)
    thread.start()
    try:
        yield expired
    finally:
        done.set()


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
    choose_accelerator()
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        for info in images:
            g.add_drive_opts(str(info.path), readonly=readonly, format=info.format)
        started = time.monotonic()
        timeout = launch_timeout()
        with phase("starting the libguestfs appliance"), _watchdog(timeout) as expired:
            try:
                g.launch()
            except RuntimeError as exc:
                if expired.is_set():
                    raise WincrashError(
                        f"the libguestfs appliance did not start within {timeout:.0f} s (stopped it): check "
                        "`wincrash doctor` and `libguestfs-test-tool`; LIBGUESTFS_BACKEND_SETTINGS=force_tcg "
                        f"avoids a KVM that cannot run guests; {TIMEOUT_ENV}=SECONDS allows longer") from None
                raise WincrashError(f"cannot start the libguestfs appliance: {_clean_guestfs_error(exc)}") from None
        try:
            yield Appliance(g=g, images=images, readonly=readonly, launch_seconds=time.monotonic() - started)
        except RuntimeError as exc:  # a libguestfs call nobody wrapped: still one line, never a traceback
            raise WincrashError(f"libguestfs: {_clean_guestfs_error(exc)}") from None
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
