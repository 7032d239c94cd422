"""Find the Windows installations on a VM's disks and every crash-related file they hold.

First libguestfs inspection (it maps drive letters from the registry); when that finds no
Windows (the usual state of a guest that no longer boots: damaged files, missing cmd.exe, odd
hives) every NTFS filesystem is scanned for Windows\\System32\\config\\SYSTEM instead.

From the SYSTEM hive (the control set Select\\Current names) we read where Windows puts its
files: Memory Management\\PagingFiles and ExistingPageFiles, CrashControl\\DumpFile and
MinidumpDir. Defaults are used when a value is missing, and the default locations are always
looked at too, because a damaged registry is exactly when someone needs this.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from wincrash.disk import hive
from wincrash.disk.guestfs_backend import guestfs_call
from wincrash.errors import WincrashError

SYSTEM_HIVE = "System32/config/SYSTEM"
DEFAULT_DUMP_FILE = "%SystemRoot%\\MEMORY.DMP"
DEFAULT_MINIDUMP_DIR = "%SystemRoot%\\Minidump"
MEMORY_MANAGEMENT = ("Control", "Session Manager", "Memory Management")
CRASH_CONTROL = ("Control", "CrashControl")


@dataclass(frozen=True)
class GuestFile:
    """One file to fetch: where it is in the appliance, and what Windows calls it."""

    role: str  # pagefile, swapfile, dumpfile, minidump, live-kernel-report
    windows_path: str  # C:\pagefile.sys
    mount_path: str  # /sda2/pagefile.sys (inside the appliance)
    device: str
    size: int  # bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: role, windows_path, device, size (bytes)."""
        return {"role": self.role, "windows_path": self.windows_path, "device": self.device, "size": self.size}


@dataclass(frozen=True)
class WindowsInstall:
    """One Windows installation and its crash settings (filled in stages: found, read_settings, locate_files)."""

    device: str  # the filesystem holding %SystemRoot% (the boot volume)
    systemroot: str  # path on that filesystem, e.g. /Windows
    found_by: str  # "inspection" or "scan"
    product: str | None = None
    letter: str = "C"  # drive letter of the boot volume as Windows sees it
    drive_map: Mapping[str, str] = field(default_factory=dict)  # letter -> device
    hive_path: str = ""  # mount path of the SYSTEM hive
    control_set: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # value name -> data, from the SYSTEM hive
    files: tuple[GuestFile, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: device, systemroot, found_by, product, boot_volume_letter, control_set, settings,
        notes, files (each GuestFile.to_dict())."""
        return {
            "device": self.device, "systemroot": self.systemroot, "found_by": self.found_by,
            "product": self.product, "boot_volume_letter": self.letter, "control_set": self.control_set,
            "settings": dict(self.settings), "notes": list(self.notes),
            "files": [f.to_dict() for f in self.files],
        }


def mount_point(device: str) -> str:
    """Where we mount ``device`` in the appliance: /dev/sda2 -> /sda2, /dev/mapper/x -> /mapper_x."""
    return "/" + device.removeprefix("/dev/").replace("/", "_")


def _is_bitlocker(fstype: str) -> bool:
    return "bitlocker" in fstype.lower()


def unlock_bitlocker(g: Any, recovery_key: str | None) -> list[str]:
    """Open BitLocker volumes with the recovery key (cryptsetup's bitlk); return the volumes left locked."""
    locked = [dev for dev, fstype in g.list_filesystems().items() if _is_bitlocker(fstype)]
    if not locked or recovery_key is None:
        return locked
    for index, dev in enumerate(locked):
        guestfs_call(f"{dev}: cannot unlock the BitLocker volume with this recovery key",
                     g.cryptsetup_open, dev, recovery_key, f"bitlk{index}", readonly=True, crypttype="bitlk")
    return []


def ntfs_devices(g: Any) -> list[str]:
    """Every NTFS filesystem the appliance sees, each given its own mount point.

    The mount points must be made before anything is mounted, and inspection mounts things,
    so call this first, then inspect_windows, then mount_all.
    """
    devices = sorted(dev for dev, fstype in g.list_filesystems().items() if fstype == "ntfs")
    for dev in devices:
        g.mkmountpoint(mount_point(dev))
    return devices


def mount_all(g: Any, devices: list[str]) -> None:
    """Mount every NTFS filesystem read-only under its mount point."""
    for dev in devices:
        guestfs_call(f"{dev}: cannot mount NTFS read-only (damaged filesystem?)", g.mount_ro, dev, mount_point(dev))


def _real_path(g: Any, path: str) -> str | None:
    """The path with its on-disk letter case, or None when it does not exist (NTFS is case-insensitive)."""
    try:
        real = g.case_sensitive_path(path)
    except RuntimeError:
        return None
    return real if g.exists(real) else None


def inspect_windows(g: Any) -> list[WindowsInstall]:
    """Windows installations libguestfs inspection recognises; call it before mounting anything."""
    installs: list[WindowsInstall] = []
    try:
        roots = g.inspect_os()
    except RuntimeError:
        return installs
    for root in roots:
        try:
            if g.inspect_get_type(root) != "windows":
                continue
            systemroot = g.inspect_get_windows_systemroot(root)
            product = g.inspect_get_product_name(root)
            drive_map = {k.upper(): v for k, v in g.inspect_get_drive_mappings(root).items()}
        except RuntimeError:
            continue
        letter = next((k for k, dev in reversed(drive_map.items()) if dev == root), "C")
        installs.append(WindowsInstall(device=root, systemroot=systemroot, found_by="inspection", product=product,
                                       letter=letter, drive_map=drive_map))
    g.umount_all()
    return installs


def scan_for_windows(g: Any, devices: list[str]) -> list[WindowsInstall]:
    """Windows installations found by looking for Windows\\System32\\config\\SYSTEM on mounted NTFS."""
    installs = []
    for dev in devices:
        for candidate in ("/Windows", "/WINNT"):
            real = _real_path(g, mount_point(dev) + candidate + "/" + SYSTEM_HIVE)
            if real:
                systemroot = real[len(mount_point(dev)):][: -len(SYSTEM_HIVE) - 1]
                installs.append(WindowsInstall(
                    device=dev, systemroot=systemroot, found_by="scan",
                    notes=("libguestfs inspection did not recognise this Windows (damaged system?); "
                           "found by scanning the NTFS filesystems",)))
                break
    return installs


def read_settings(g: Any, install: WindowsInstall) -> WindowsInstall:
    """``install`` with its SYSTEM hive path, control set and crash settings; damaged hives leave defaults and a note.

    Settings (from the control set Select\\Current names): Memory Management\\PagingFiles and
    ExistingPageFiles, CrashControl\\DumpFile, MinidumpDir and CrashDumpEnabled; None when unset.
    """
    hive_path = _real_path(g, mount_point(install.device) + install.systemroot + "/" + SYSTEM_HIVE) or ""
    settings: dict[str, Any] = {"PagingFiles": None, "ExistingPageFiles": None, "DumpFile": None,
                                "MinidumpDir": None, "CrashDumpEnabled": None}
    if not hive_path:
        return replace(install, hive_path="", settings=settings,
                       notes=(*install.notes, "no SYSTEM hive: using Windows' default locations"))
    control_set = None
    notes = install.notes
    try:
        with hive.open_hive(g, hive_path) as root:
            control_set = hive.current_control_set(g, root)
            mm = hive.child(g, root, control_set, *MEMORY_MANAGEMENT)
            cc = hive.child(g, root, control_set, *CRASH_CONTROL)
            for node, names in ((mm, ("PagingFiles", "ExistingPageFiles")),
                                (cc, ("DumpFile", "MinidumpDir", "CrashDumpEnabled"))):
                for name in names:
                    value = hive.get_value(g, node, name) if node else None
                    settings[name] = value[1] if value else None
    except (WincrashError, RuntimeError) as exc:
        notes = (*notes, f"cannot read the SYSTEM hive ({exc}): using Windows' default locations")
    return replace(install, hive_path=hive_path, control_set=control_set, settings=settings, notes=notes)


def parse_paging_files(entries: list[str] | str | None) -> list[tuple[str, int | None, int | None]]:
    """PagingFiles entries ('C:\\pagefile.sys 1024 4096', '?:\\pagefile.sys') -> (path, min MB, max MB)."""
    if isinstance(entries, str):
        entries = [entries]
    result = []
    for entry in entries or []:
        match = re.match(r"^\s*(\S.*?\.sys)(?:\s+(\d+))?(?:\s+(\d+))?\s*$", entry, re.IGNORECASE)
        if match:
            low, high = match.group(2), match.group(3)
            result.append((match.group(1).removeprefix("\\??\\"), int(low) if low else None,
                           int(high) if high else None))
    return result


def _expand(path: str, install: WindowsInstall) -> str:
    windows = install.letter + ":" + install.systemroot.replace("/", "\\")
    path = re.sub("%systemroot%", lambda _m: windows, path, flags=re.IGNORECASE)
    return re.sub("%systemdrive%", lambda _m: install.letter + ":", path, flags=re.IGNORECASE)


def _resolve(g: Any, windows_path: str, install: WindowsInstall, devices: list[str]) -> list[tuple[str, str]]:
    """Windows path -> [(device, mount path)] of existing files; '?:' and unmapped letters search every volume."""
    match = re.match(r"^([A-Za-z?]):\\(.*)$", windows_path)
    if not match:
        return []
    letter, rest = match.group(1).upper(), match.group(2).replace("\\", "/")
    if letter == install.letter:
        candidates = [install.device]
    elif letter in install.drive_map:
        candidates = [install.drive_map[letter]]
    else:  # '?' (system managed, any drive) or a letter we cannot map: look everywhere
        candidates = [install.device] + [d for d in devices if d != install.device]
    found = []
    for dev in candidates:
        if dev not in devices:
            continue
        real = _real_path(g, mount_point(dev) + "/" + rest)
        if real and g.is_file(real):
            found.append((dev, real))
    return found


def locate_files(g: Any, install: WindowsInstall, devices: list[str]) -> WindowsInstall:
    """``install`` with ``files``: every paging file, dump file, minidump and live kernel report it has.

    Paths come from the settings read_settings found, and Windows' default locations are always
    looked at too. Notes say what is missing (no paging file, no dump file).
    """
    seen: set[str] = set()
    files: list[GuestFile] = []
    notes = list(install.notes)

    def add(role: str, windows_path: str, dev: str, real: str) -> None:
        if real in seen:
            return
        seen.add(real)
        letter = next((k for k, v in install.drive_map.items() if v == dev), None)
        if dev == install.device:
            letter = install.letter
        shown = f"{letter}:" + real[len(mount_point(dev)):].replace("/", "\\") if letter else windows_path
        files.append(GuestFile(role=role, windows_path=shown, mount_path=real, device=dev, size=g.filesize(real)))

    settings = install.settings
    paging = [p for p, _, _ in parse_paging_files(settings.get("PagingFiles"))]
    paging += [p for p, _, _ in parse_paging_files(settings.get("ExistingPageFiles"))]
    paging += [f"{install.letter}:\\pagefile.sys", f"{install.letter}:\\swapfile.sys"]
    for path in paging:
        role = "swapfile" if path.lower().endswith("swapfile.sys") else "pagefile"
        for dev, real in _resolve(g, path, install, devices):
            add(role, path, dev, real)
    if not any(f.role == "pagefile" for f in files):
        notes.append("no paging file found (none configured, or it was deleted)")

    dump_file = _expand(settings.get("DumpFile") or DEFAULT_DUMP_FILE, install)
    for candidate in dict.fromkeys([dump_file, _expand(DEFAULT_DUMP_FILE, install)]):
        for dev, real in _resolve(g, candidate, install, devices):
            add("dumpfile", candidate, dev, real)
    if not any(f.role == "dumpfile" for f in files):
        notes.append(f"no dump file at {dump_file} (Windows writes it on the reboot after a crash)")

    for role, folder in (("minidump", settings.get("MinidumpDir") or DEFAULT_MINIDUMP_DIR),
                         ("minidump", DEFAULT_MINIDUMP_DIR),
                         ("live-kernel-report", "%SystemRoot%\\LiveKernelReports")):
        windows_dir = _expand(folder, install)
        for dev, real_dir in _resolve_dir(g, windows_dir, install, devices):
            for name in sorted(g.find(real_dir)):
                real = real_dir + "/" + name
                if name.lower().endswith(".dmp") and g.is_file(real):
                    add(role, windows_dir.rstrip("\\") + "\\" + name.replace("/", "\\"), dev, real)
    return replace(install, files=tuple(files), notes=tuple(notes))


def _resolve_dir(g: Any, windows_dir: str, install: WindowsInstall, devices: list[str]) -> list[tuple[str, str]]:
    match = re.match(r"^([A-Za-z?]):\\(.*)$", windows_dir)
    if not match:
        return []
    letter, rest = match.group(1).upper(), match.group(2).replace("\\", "/")
    dev = install.device if letter == install.letter else install.drive_map.get(letter)
    if dev is None or dev not in devices:
        return []
    real = _real_path(g, mount_point(dev) + "/" + rest)
    return [(dev, real)] if real and g.is_dir(real) else []
