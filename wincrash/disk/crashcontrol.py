"""`wincrash prepare`: set the crash-dump registry values in an offline guest's SYSTEM hive.

Why offline: a guest that hangs cannot be configured from inside, and these values are read at
boot. Written through libguestfs' hivex calls on the control set Select\\Current names (the one
Windows boots with). A copy of the original hive is kept on the host before anything is written
(next to the disk image, or in --backup-dir), and the values are read back after the commit.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from wincrash.disk import hive
from wincrash.disk.download import download
from wincrash.disk.guestfs_backend import guestfs_call, open_appliance
from wincrash.disk.image import probe_image
from wincrash.disk.locate import (
    CRASH_CONTROL,
    WindowsInstall,
    inspect_windows,
    mount_all,
    mount_point,
    ntfs_devices,
    parse_paging_files,
    read_settings,
    scan_for_windows,
)
from wincrash.errors import EXIT_OK, WincrashError
from wincrash.output import check_destination

MIB = 1 << 20
MAX_RAM = 64 << 40  # bytes: far above any VM QEMU runs
# CrashDumpEnabled per --dump (Microsoft's "Overview of memory dump file options"); 'active' is a
# complete dump with FilterPages=1 (Windows 10 1607+). Keys are choices.CrashDumpKind's values.
DUMP_TYPES = {"complete": 1, "kernel": 2, "automatic": 7, "active": 1}


@dataclass(frozen=True)
class Change:
    """One registry value to set (below the control set), and what it was and became.

    ``before``/``after`` are decoded values (hive.decode_value), None when the value is absent.
    """

    key: tuple[str, ...]  # below the control set
    name: str
    vtype: int  # hive.REG_*
    value: Any
    before: Any = None
    after: Any = None
    key_created: bool = False

    def where(self, control_set: str) -> str:
        """The full registry path, e.g. HKLM\\SYSTEM\\ControlSet001\\Control\\CrashControl\\AutoReboot."""
        return "\\".join(("HKLM\\SYSTEM", control_set, *self.key, self.name))


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare` did (or would do with --dry-run)."""

    disk: Path
    install: WindowsInstall
    control_set: str
    changes: tuple[Change, ...]
    backup: Path | None  # the original SYSTEM hive on the host; None on a dry run
    dry_run: bool
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def unchanged(self) -> bool:
        """True when nothing was (or, on a dry run, would be) written: every value was already right."""
        return not needs_writing(self.changes)

    @property
    def exit_code(self) -> int:
        """Always 0: every failure is a WincrashError instead."""
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: disk, device, control_set, dry_run, backup, changes (path, type, before, after,
        key_created), warnings."""
        return {
            "disk": str(self.disk), "device": self.install.device,
            "control_set": self.control_set, "dry_run": self.dry_run,
            "backup": str(self.backup) if self.backup else None, "unchanged": self.unchanged,
            "changes": [{"path": c.where(self.control_set), "type": hive.TYPE_NAMES.get(c.vtype, c.vtype),
                         "before": c.before, "after": c.after, "key_created": c.key_created}
                        for c in self.changes],
            "warnings": list(self.warnings),
        }


def plan(dump: str, nmi: bool, keyboard: bool, no_auto_reboot: bool,
         dump_file: str = "%SystemRoot%\\MEMORY.DMP") -> list[Change]:
    """The values to write for these options (pure: no I/O); WincrashError for an unknown ``dump``."""
    if dump not in DUMP_TYPES:
        raise WincrashError(f"--dump {dump}: choose one of {', '.join(DUMP_TYPES)}")
    cc = CRASH_CONTROL
    changes = [Change(cc, "CrashDumpEnabled", hive.REG_DWORD, DUMP_TYPES[dump])]
    if dump == "active":
        changes.append(Change(cc, "FilterPages", hive.REG_DWORD, 1))
    changes += [
        Change(cc, "NMICrashDump", hive.REG_DWORD, 1 if nmi else 0),
        Change(cc, "Overwrite", hive.REG_DWORD, 1),
        Change(cc, "AlwaysKeepMemoryDump", hive.REG_DWORD, 1),
        Change(cc, "DumpFile", hive.REG_EXPAND_SZ, dump_file),
    ]
    if no_auto_reboot:
        changes.append(Change(cc, "AutoReboot", hive.REG_DWORD, 0))
    if keyboard:
        for service in ("kbdhid", "i8042prt"):
            changes.append(Change(("Services", service, "Parameters"), "CrashOnCtrlScroll", hive.REG_DWORD, 1))
    return changes


def parse_size(text: str | None) -> int | None:
    """'8G', '8192M', '8GiB', '4096' (MiB) -> bytes; None stays None. WincrashError naming --ram otherwise
    (not a size, or outside 1 MiB .. MAX_RAM: x86-64's 52-bit physical address space is 4 PiB, QEMU's
    largest guests are a few TiB)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,12}(?:\.\d{1,6})?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise WincrashError(f"--ram {text[:40]}: give a size such as 8G or 8192M")
    number, unit = Decimal(match.group(1)), match.group(2).upper() or "M"
    value = int(number * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])
    if not MIB <= value <= MAX_RAM:
        raise WincrashError(f"--ram {text}: give the VM's memory, between 1M and {MAX_RAM >> 40}T")
    return value


def check_pagefile(install: WindowsInstall, dump: str, ram: int | None,
                   pagefile_size: int | None) -> list[str]:
    """Warnings when the boot volume's paging file cannot hold the dump Windows will write.

    Windows writes the dump into the paging file of the boot volume; a complete dump needs it to
    be at least RAM + 1 MiB (the header and runs come first). The disk does not know the VM's RAM,
    so it comes from --ram.
    """
    warnings = []
    entries = parse_paging_files(install.settings.get("PagingFiles"))
    boot = [(p, lo, hi) for p, lo, hi in entries if p[:1].upper() in (install.letter, "?")]
    if entries and not boot:
        warnings.append(f"no paging file on the boot volume {install.letter}: (PagingFiles: "
                        f"{', '.join(p for p, _, _ in entries)}): Windows cannot write a crash dump "
                        "unless a DedicatedDumpFile is configured")
    if dump not in ("complete", "active"):
        return warnings
    if ram is None:
        warnings.append("a complete dump needs a paging file of at least RAM + 1 MiB on the boot volume: "
                        "give the VM's memory with --ram to check it")
        return warnings
    needed = ram + MIB
    for path, _low, high in boot:
        if high:  # a fixed maximum, in MiB
            if high * MIB < needed:
                warnings.append(f"{path} may grow to {high:,} MiB only; a complete dump of {ram // MIB:,} MiB "
                                f"of RAM needs at least {needed // MIB:,} MiB: raise it or choose --dump kernel")
        elif pagefile_size is not None and pagefile_size < needed:
            warnings.append(f"{path} is system-managed and now {pagefile_size // MIB:,} MiB; a complete dump needs "
                            f"{needed // MIB:,} MiB: Windows should grow it at the next boot, check it then")
    return warnings


def _install(g: Any, disk: Path) -> WindowsInstall:
    """The one Windows installation on the disk (mounted read-only); WincrashError for none or several."""
    devices = ntfs_devices(g)
    if not devices:
        raise WincrashError(f"{disk}: no NTFS filesystem")
    installs = inspect_windows(g)
    mount_all(g, devices)
    installs = [i for i in installs if i.device in devices] or scan_for_windows(g, devices)
    if not installs:
        raise WincrashError(f"{disk}: no Windows installation on the NTFS filesystems ({', '.join(devices)})")
    if len(installs) > 1:
        raise WincrashError(f"{disk}: several Windows installations ({', '.join(i.device for i in installs)}); "
                            "prepare supports one per disk")
    return installs[0]


def _remount_rw(g: Any, device: str) -> None:
    point = mount_point(device)
    g.umount(point)
    guestfs_call(f"{device}: cannot mount NTFS read-write (Windows hibernated or Fast Startup left it "
                 "in use? shut Windows down fully, or the filesystem is damaged)", g.mount, device, point)


def _apply(g: Any, hive_path: str, changes: list[Change], write: bool) -> tuple[str, tuple[Change, ...]]:
    """Read 'before', set values (when writing), commit, read back; return the control set and the changes."""
    done: list[Change] = []
    with hive.open_hive(g, hive_path, write=write) as root:
        control_set = hive.current_control_set(g, root)
        cs = hive.child(g, root, control_set)
        if cs is None:
            raise WincrashError(f"{hive_path}: Select\\Current names {control_set}, which does not exist")
        for change in changes:
            node, created = cs, False
            for name in change.key:
                sub = g.hivex_node_get_child(node, name)
                if not sub:
                    created = True
                    if not write:
                        node = 0
                        break
                    sub = g.hivex_node_add_child(node, name)
                node = sub
            current = hive.get_value(g, node, change.name) if node else None
            done.append(replace(change, before=current[1] if current else None, key_created=created))
            if write:
                g.hivex_node_set_value(node, change.name, change.vtype, hive.encode_value(change.vtype, change.value))
        if write:
            guestfs_call(f"{hive_path}: cannot write the hive", g.hivex_commit, None)
    if not write:
        return control_set, tuple(replace(c, after=c.value) for c in done)
    read_back: list[Change] = []
    with hive.open_hive(g, hive_path) as root:  # what is now on disk
        cs = hive.child(g, root, control_set)
        for change in done:
            node = hive.child(g, cs, *change.key)
            current = hive.get_value(g, node, change.name) if node else None
            after = current[1] if current else None
            if after != change.value:
                raise WincrashError(f"{change.where(control_set)}: read back {after!r} after writing "
                                    f"{change.value!r}; the original hive is kept")
            read_back.append(replace(change, after=after))
    return control_set, tuple(read_back)


def backup_path(disk: Path, backup_dir: Path | None, stamp: str) -> Path:
    """Where the original hive goes: <backup_dir or the disk's folder>/<disk name>.SYSTEM.<stamp>.orig.

    Checked before any slow work: WincrashError when that folder is missing or not writable (the
    message names --backup-dir), or the file exists. Never the current directory by default.
    """
    folder = backup_dir if backup_dir is not None else disk.resolve().parent
    path = (folder / f"{disk.name}.SYSTEM.{stamp}.orig").resolve()
    try:
        check_destination(path, force=False)
    except WincrashError as exc:
        raise WincrashError(f"cannot keep the original SYSTEM hive: {exc} (choose a folder with --backup-dir)"
                            ) from None
    return path


def prepare(disk: Path, *, dump: str = "automatic", nmi: bool = True, keyboard: bool = False,
            no_auto_reboot: bool = True, dry_run: bool = False, ram: int | None = None,
            backup_dir: Path | None = None) -> PrepareResult:
    """The `prepare` command: plan, check the image, back the hive up, write, read back.

    ``ram`` is the VM's memory in bytes (None: unknown; parse_size reads '8G'), used only to warn
    when the paging file cannot hold a complete dump. WincrashError for every failure; nothing is
    written on a dry run. The backup goes next to the disk image unless ``backup_dir`` is given.
    """
    started = time.monotonic()
    changes = plan(dump, nmi, keyboard, no_auto_reboot)
    info = probe_image(disk)
    if info.in_use:
        raise WincrashError(f"{disk}: in use by a running VM (QEMU holds its image lock); shut the VM down "
                            "first: changing a disk under a running guest corrupts it")
    backup = None if dry_run else backup_path(disk, backup_dir, time.strftime("%Y%m%d-%H%M%S"))
    with open_appliance([info], readonly=dry_run) as app:
        g = app.g
        install = read_settings(g, _install(g, disk))
        if not install.hive_path:
            raise WincrashError(f"{disk}: {install.device}{install.systemroot} has no System32\\config\\SYSTEM hive")
        pagefile = f"{mount_point(install.device)}/pagefile.sys"
        size = g.filesize(pagefile) if g.is_file(pagefile) else None
        warnings = check_pagefile(install, dump, ram, size)
        control_set, applied = _apply(g, install.hive_path, changes, write=False)
        if not dry_run and needs_writing(applied):
            download(g, install.hive_path, backup, g.filesize(install.hive_path), progress=False,
                     inputs=[disk])
            _remount_rw(g, install.device)
            control_set, applied = _apply(g, install.hive_path, changes, write=True)
        else:
            backup = None  # already set as asked (or a dry run): nothing written, no backup kept
    return PrepareResult(disk=disk, install=install, control_set=control_set, changes=applied, backup=backup,
                         dry_run=dry_run, warnings=tuple(warnings), seconds=time.monotonic() - started)


def needs_writing(changes: tuple[Change, ...]) -> bool:
    """True when some value differs from what it should become (or its key is missing)."""
    return any(c.key_created or c.before != c.value for c in changes)
