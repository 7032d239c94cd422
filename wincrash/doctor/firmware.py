"""Which firmware a VM boots, and its version: SeaBIOS >= 1.10 or OVMF (UEFI) for Hyper-V guests.

QEMU tells us the firmware by name only (``qom-get /machine firmware`` is the -bios name, relative
names are looked up in QEMU's data directories; a UEFI code image shows up as the ``pflash0`` block
device). The version is inside the file: SeaBIOS keeps its version string next to the literal
"SeaBIOS (version %s)"; an OVMF image starts with a UEFI firmware volume ('_FVH' at 0x28). We only
read files on this host when the VM runs on this host, and say "unknown" rather than guess.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from wincrash.doctor.report import Check, ok, warn
from wincrash.doctor.versions import parse_version, show

MIN_SEABIOS = (1, 10)
_SEABIOS_MARK = b"SeaBIOS (version"
# The version string SeaBIOS builds in: "1.16.2-debian-1.16.2-1", "rel-1.16.0-0-gd239552c-prebuilt.qemu.org", ...
_SEABIOS_VERSION_RE = re.compile(rb"\x00((?:rel-)?1\.\d{1,2}(?:\.\d+)?(?:-[\x21-\x7e]+)?)\x00")
FIX_FIRMWARE = ("boot the VM with SeaBIOS >= 1.10 (Debian/Ubuntu `apt install seabios`, QEMU's default -bios "
                "bios-256k.bin) or with OVMF (`-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/"
                "OVMF_CODE.fd`; libvirt: <os firmware='efi'>)")


@dataclass(frozen=True)
class FirmwareId:
    kind: str  # "seabios", "ovmf" or "unknown"
    version: str | None = None


def identify(data: bytes) -> FirmwareId:
    """What a firmware image is, from its bytes alone."""
    if data[0x28:0x2C] == b"_FVH":
        return FirmwareId("ovmf")
    if _SEABIOS_MARK in data:
        m = _SEABIOS_VERSION_RE.search(data)
        return FirmwareId("seabios", m[1].decode("ascii") if m else None)
    return FirmwareId("unknown")


def qemu_data_dirs(binary: str | None) -> list[Path]:
    """QEMU's own firmware search path (``qemu-system-x86_64 -L help``), the place -bios NAME is looked up."""
    exe = binary or shutil.which("qemu-system-x86_64")
    if not exe:
        return []
    try:
        proc = subprocess.run([exe, "-L", "help"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(line.strip()) for line in proc.stdout.splitlines() if line.strip().startswith("/")]


def locate(name: str, search: list[Path]) -> Path | None:
    """QEMU's qemu_find_file(): an existing path as given, else the first data directory holding it."""
    path = Path(name)
    if path.is_absolute():
        return path if path.is_file() else None
    for folder in search:
        if (folder / name).is_file():
            return (folder / name).resolve()
    return None


def check_firmware(source: str | None, name: str | None, path: Path | None, why_unknown: str | None) -> Check:
    """Judge the firmware file. ``source`` is how QEMU names it ('-bios' or 'pflash0'), ``name`` the name it
    gave, ``path`` the file on this host (None when unreachable: then ``why_unknown`` says why)."""
    check = "host.firmware"
    details: dict[str, object] = {"source": source, "name": name, "path": str(path) if path else None}
    if path is None:
        return warn(check, f"firmware unknown: {why_unknown}", FIX_FIRMWARE + "; check by hand which firmware the "
                    "VM boots", kind="unknown", version=None, **details)
    try:
        with open(path, "rb") as fh:
            data = fh.read(64 << 20)
    except OSError as exc:
        return warn(check, f"firmware {path} unreadable ({(exc.strerror or str(exc)).lower()}): type unknown",
                    FIX_FIRMWARE, kind="unknown", version=None, **details)
    fw = identify(data)
    details.update(kind=fw.kind, version=fw.version)
    if fw.kind == "ovmf":
        return ok(check, f"OVMF (UEFI) from {path}", **details)
    if fw.kind == "seabios":
        version = parse_version(fw.version or "")
        if version is None:
            return warn(check, f"SeaBIOS of unknown version in {path}", FIX_FIRMWARE, **details)
        if version[:2] < MIN_SEABIOS:
            return Check(check, "fail", f"SeaBIOS {fw.version} in {path} is older than {show(MIN_SEABIOS)}",
                         FIX_FIRMWARE, details)
        return ok(check, f"SeaBIOS {fw.version} (>= {show(MIN_SEABIOS)}) from {path}", **details)
    return warn(check, f"{path} is neither SeaBIOS nor OVMF: firmware type and version unknown", FIX_FIRMWARE,
                **details)
