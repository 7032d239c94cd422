"""`wincrash grab-pagefile`: copy every crash-related file out of a VM's disks, and cut out the dump.

Flow: probe the images on the host (cheap errors first, lock check), one read-only appliance for
all disks, find Windows, copy files (streamed, 0600, sizes verified), close the appliance, then
look at the copied pagefiles on the host and cut out the dump any of them holds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wincrash.disk.download import download
from wincrash.disk.guestfs_backend import open_appliance
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

NO_DUMP_TEXT = ("holds no crash dump (it does not start with 'PAGEDU64'/'PAGEDUMP': Windows has reused it "
                "since the crash, e.g. after a reboot, or never crashed)")


@dataclass
class GrabResult:
    """Everything `grab-pagefile` did, for the text and JSON output."""

    images: list[ImageInfo]
    installs: list[WindowsInstall] = field(default_factory=list)
    copied: list[tuple[GuestFile, Path]] = field(default_factory=list)
    dumps: list[tuple[Path, EmbeddedDump | None]] = field(default_factory=list)  # per pagefile
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    bytes_copied: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": [{"path": str(i.path), "format": i.format, "virtual_size": i.virtual_size,
                        "backing_chain": i.backing_chain, "in_use": i.in_use} for i in self.images],
            "installs": [i.to_dict() for i in self.installs],
            "copied": [{"role": f.role, "windows_path": f.windows_path, "path": str(p), "size": f.size}
                       for f, p in self.copied],
            "pagefiles": [{"path": str(p), "dump": d.to_dict() if d else None} for p, d in self.dumps],
            "warnings": self.warnings,
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


def _prepare_dir(path: Path) -> None:
    try:  # every level we create is private (mkdir's parents=True would make the upper ones 0755)
        for level in reversed([path, *path.parents]):
            if not level.exists():
                level.mkdir(mode=0o700)
    except OSError as exc:
        raise WincrashError(f"{path}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WincrashError(f"{path}: output folder is not writable")


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


def grab(disks: list[Path], out_dir: Path, force_share: bool = False, recovery_key: str | None = None,
         force: bool = False, progress: bool | None = None) -> GrabResult:
    """Do the whole command; raise WincrashError for every failure (nothing half-written stays behind)."""
    if progress is None:
        progress = sys.stderr.isatty()
    started = time.monotonic()
    images = [probe_image(d) for d in disks]
    result = GrabResult(images=images)
    for info in images:
        if info.in_use and force_share:
            result.warnings.append(f"{info.path} is in use by a running VM: read anyway (--force-share); "
                                   "the data may be inconsistent")
    _prepare_dir(out_dir)
    with open_appliance(images, readonly=True, force_share=force_share) as app:
        result.timings["launch_s"] = app.launch_seconds
        g = app.g
        mark = time.monotonic()
        installs, devices = _find_windows(g, recovery_key, images)
        for install in installs:
            read_settings(g, install)
            locate_files(g, install, devices)
        result.installs = installs
        result.timings["inspection_s"] = time.monotonic() - mark
        total = sum(f.size for i in installs for f in i.files)
        check_free_space(out_dir / "x", total)
        mark = time.monotonic()
        for install in installs:
            base = out_dir if len(installs) == 1 else out_dir / mount_point(install.device).lstrip("/")
            for f in install.files:
                target = base / local_name(install, f)
                _prepare_dir(target.parent)
                download(g, f.mount_path, target, f.size, force=force, progress=progress,
                         label=f.windows_path)
                result.copied.append((f, target))
                result.bytes_copied += f.size
        result.timings["download_s"] = time.monotonic() - mark
    for f, target in result.copied:
        if f.role != "pagefile":
            continue
        if starts_with_dump(target):
            out = target.with_name(target.stem + "-dump.dmp")
            result.dumps.append((target, extract_dump(target, out, force=force, progress=progress)))
        else:
            result.dumps.append((target, None))
    result.timings["total_s"] = time.monotonic() - started
    return result


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def print_result(result: GrabResult, as_json: bool) -> int:
    """Print what was found and copied; return the exit code (1 when a cut dump has problems)."""
    problems = any(d is not None and d.problems for _, d in result.dumps)
    for warning in result.warnings:
        print(f"wincrash: warning: {warning}", file=sys.stderr)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return EXIT_PROBLEMS if problems else EXIT_OK
    for install in result.installs:
        how = f"inspection: {install.product}" if install.found_by == "inspection" else "scanning NTFS"
        print(f"Windows on {install.device} ({install.letter}:{install.systemroot.replace('/', chr(92))}, "
              f"found by {how}), control set {install.control_set or 'unknown'}")
        for key in ("CrashDumpEnabled", "DumpFile", "MinidumpDir", "PagingFiles"):
            if install.settings.get(key) is not None:
                print(f"  {key}: {install.settings[key]}")
        for note in install.notes:
            print(f"  note: {note}")
    for f, target in result.copied:
        print(f"copied {f.windows_path} -> {target} ({_mib(f.size)})")
    if not result.copied:
        print("no crash-related files found")
    for pagefile, dump in result.dumps:
        if dump is None:
            print(f"{pagefile.name} {NO_DUMP_TEXT}")
            continue
        print(f"{pagefile.name} holds a crash dump: wrote {dump.path} ({dump.size:,} bytes, {dump.kind or '?'})")
        if dump.bugcheck:
            params = ", ".join(dump.bugcheck.get("parameters", []))
            print(f"  bugcheck {dump.bugcheck.get('code')} {dump.bugcheck.get('name') or ''} ({params})")
        for problem in dump.problems:
            print(f"  problem: {problem}")
        if dump.sound:
            print("  the dump passes info's soundness checks")
    return EXIT_PROBLEMS if problems else EXIT_OK


def run(disks: list[Path], out_dir: Path, force_share: bool, recovery_key: str | None, force: bool,
        as_json: bool) -> int:
    """The CLI's entry: grab, print, exit code."""
    return print_result(grab(disks, out_dir, force_share, recovery_key, force), as_json)
