"""`wincrash grab-pagefile`: copy every crash-related file out of a VM's disks, and cut out the dump.

Flow: probe the images on the host (cheap errors first, lock check), one read-only appliance for
all disks, find Windows, copy files (streamed, 0600, sizes verified), close the appliance, then
look at the copied pagefiles on the host and cut out the dump any of them holds.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wincrash.disk.download import download
from wincrash.disk.guestfs_backend import open_appliance, phase
from wincrash.disk.image import ImageInfo, probe_image
from wincrash.disk.locate import (
    GuestFile,
    WindowsInstall,
    inspect_windows,
    locate_files,
    mount_all,
    mount_point,
    ntfs_devices,
    read_settings,
    scan_for_windows,
    unlock_bitlocker,
)
from wincrash.disk.pagefile import EmbeddedDump, extract_dump, starts_with_dump
from wincrash.errors import EXIT_OK, EXIT_PROBLEMS, WincrashError
from wincrash.output import check_free_space
from wincrash.progress import progress_wanted


@dataclass(frozen=True)
class GrabResult:
    """Everything `grab-pagefile` did, for the text and JSON output."""

    images: tuple[ImageInfo, ...]
    installs: tuple[WindowsInstall, ...] = ()
    copied: tuple[tuple[GuestFile, Path], ...] = ()  # (guest file, where it is on the host)
    dumps: tuple[tuple[Path, EmbeddedDump | None], ...] = ()  # per copied pagefile: the dump cut out of it
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)  # seconds: launch_s, inspection_s, download_s, total_s
    bytes_copied: int = 0

    @property
    def exit_code(self) -> int:
        """1 when a dump cut out of a pagefile has problems (info's soundness checks), else 0."""
        return EXIT_PROBLEMS if any(d is not None and d.problems for _, d in self.dumps) else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: images, installs, copied (role, windows_path, path, size), pagefiles (path, dump),
        warnings, timings (seconds), bytes_copied."""
        return {
            "images": [i.to_dict() for i in self.images],
            "installs": [i.to_dict() for i in self.installs],
            "copied": [{"role": f.role, "windows_path": f.windows_path, "path": str(p), "size": f.size}
                       for f, p in self.copied],
            "pagefiles": [{"path": str(p), "dump": d.to_dict() if d else None} for p, d in self.dumps],
            "warnings": list(self.warnings),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "bytes_copied": self.bytes_copied,
        }


def local_name(install: WindowsInstall, f: GuestFile) -> Path:
    """Where a guest file goes under the output folder: C:\\Windows\\Minidump\\x.dmp -> Minidump/x.dmp."""
    path = f.windows_path
    windows = (install.letter + ":" + install.systemroot.replace("/", "\\") + "\\").lower()
    if path.lower().startswith(windows):
        rest = path[len(windows):]
    elif path.upper().startswith(install.letter + ":\\"):
        rest = path[3:]
    else:
        rest = path[0] + "\\" + path[3:]
    return Path(*[part for part in rest.split("\\") if part not in ("", ".", "..")])


def existing_ancestor(path: Path) -> Path:
    """The nearest folder of ``path`` (itself included) that exists."""
    path = path.absolute()
    return next(level for level in (path, *path.parents) if level.exists())


def check_output_dir(path: Path) -> None:
    """Before any slow work: ``path`` is a folder or can be made one (its nearest existing level is a
    writable folder). Nothing is created here. WincrashError otherwise."""
    level = existing_ancestor(path)
    if not level.is_dir():
        raise WincrashError(f"{level}: is a file, not a folder (--output-dir)")
    if not os.access(level, os.W_OK | os.X_OK):
        raise WincrashError(f"{level}: output folder is not writable")


def _prepare_dir(path: Path) -> list[Path]:
    """Make ``path`` and its missing parents, each private (0700: mkdir's parents=True would make the upper
    ones 0755); return the folders made, outermost first."""
    made: list[Path] = []
    try:
        for level in reversed([path, *path.parents]):
            if not level.exists():
                level.mkdir(mode=0o700)
                made.append(level)
    except OSError as exc:
        raise WincrashError(f"{path}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WincrashError(f"{path}: output folder is not writable")
    return made


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders we made (innermost first) that stayed empty: a failed run leaves nothing."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _find_windows(g: Any, recovery_key: str | None, images: list[ImageInfo]) -> tuple[list[WindowsInstall], list[str]]:
    locked = unlock_bitlocker(g, recovery_key)
    devices = ntfs_devices(g)
    names = ", ".join(str(i.path) for i in images)
    if not devices:
        if locked:
            raise WincrashError(f"{', '.join(locked)}: BitLocker-encrypted volume; give its 48-digit recovery key "
                                "with --recovery-key")
        others = ", ".join(f"{fstype} on {dev}" for dev, fstype in sorted(g.list_filesystems().items())
                           if fstype != "unknown") or "none"
        raise WincrashError(f"{names}: no NTFS filesystem (filesystems found: {others})")
    installs = inspect_windows(g)
    mount_all(g, devices)
    installs = [i for i in installs if i.device in devices] or scan_for_windows(g, devices)
    if not installs:
        hint = f"; {', '.join(locked)} is BitLocker-encrypted (give --recovery-key)" if locked else ""
        raise WincrashError(f"{names}: no Windows installation on the NTFS filesystems "
                            f"({', '.join(devices)}){hint}")
    return installs, devices


def grab(disks: list[Path], out_dir: Path, *, force_share: bool = False, recovery_key: str | None = None,
         force: bool = False, progress: bool | None = None) -> GrabResult:
    """The `grab-pagefile` command: copy every crash-related file of ``disks`` into ``out_dir``.

    Images are opened read-only (they stay byte-identical); copied files are 0600 and size-checked.
    ``progress`` (None: when stderr is a terminal) shows bars on stderr. WincrashError for every
    failure, and nothing half-written stays behind.
    """
    if progress is None:
        progress = progress_wanted()
    started = time.monotonic()
    images = tuple(probe_image(d) for d in disks)
    warnings = tuple(f"{info.path} is in use by a running VM: read anyway (--force-share); the data may be "
                     "inconsistent" for info in images if info.in_use and force_share)
    timings: dict[str, float] = {}
    copied: list[tuple[GuestFile, Path]] = []
    check_output_dir(out_dir)  # before the appliance starts; the folder is made once there is something to copy
    made: list[Path] = []
    try:
        with open_appliance(list(images), readonly=True, force_share=force_share) as app:
            timings["launch_s"] = app.launch_seconds
            g = app.g
            mark = time.monotonic()
            with phase("finding Windows and its crash files"):
                found, devices = _find_windows(g, recovery_key, list(images))
                installs = tuple(locate_files(g, read_settings(g, install), devices) for install in found)
            timings["inspection_s"] = time.monotonic() - mark
            total = sum(f.size for i in installs for f in i.files)
            check_free_space(existing_ancestor(out_dir) / "x", total)
            mark = time.monotonic()
            for install in installs:
                base = out_dir if len(installs) == 1 else out_dir / mount_point(install.device).lstrip("/")
                for f in install.files:
                    target = base / local_name(install, f)
                    made += _prepare_dir(target.parent)
                    download(g, f.mount_path, target, f.size, force=force, progress=progress, label=f.windows_path,
                             inputs=disks)
                    copied.append((f, target))
            timings["download_s"] = time.monotonic() - mark
    except BaseException:
        _remove_empty(made)
        raise
    dumps: list[tuple[Path, EmbeddedDump | None]] = []
    for f, target in copied:
        if f.role != "pagefile":
            continue
        if starts_with_dump(target):
            out = target.with_name(target.stem + "-dump.dmp")
            dumps.append((target, extract_dump(target, out, force=force, progress=progress, inputs=disks)))
        else:
            dumps.append((target, None))
    timings["total_s"] = time.monotonic() - started
    return GrabResult(images=images, installs=installs, copied=tuple(copied), dumps=tuple(dumps), warnings=warnings,
                      timings=timings, bytes_copied=sum(f.size for f, _ in copied))
