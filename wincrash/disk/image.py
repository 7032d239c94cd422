"""Probe a disk image on the host before any appliance starts: format, size, backing chain, lock.

Why before: an appliance launch costs tens of seconds, so every mistake that can be seen from the
host (no such file, permission denied, not a disk image, image in use) is reported at once.

Why the lock check is ours: a running QEMU holds an fcntl lock on its images. libguestfs opens
read-only drives through a throw-away overlay whose backing file is opened with force-share, so
it reads an image that a running VM is writing WITHOUT complaint (checked on this machine with
QEMU 7.2 / libguestfs 1.48): the data may be torn. `qemu-img info` without -U takes the same
shared lock a reader needs, so its failure tells us the image is in use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wincrash.errors import WincrashError
from wincrash.inputs import open_input

LOCK_MARKERS = ('"write" lock', "Is another process using the image")


@dataclass(frozen=True)
class ImageInfo:
    """What `qemu-img info --output=json --backing-chain` says about one image (the top of its chain)."""

    path: Path
    format: str  # qemu-img's "format": qcow2, raw, vmdk, vhdx...
    virtual_size: int  # bytes the guest sees ("virtual-size")
    backing_chain: tuple[str, ...] = ()  # backing files, top-down, without the top
    in_use: bool = False  # a running process (QEMU) holds a write lock on it

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: path, format, virtual_size (bytes), backing_chain (list), in_use."""
        return {"path": str(self.path), "format": self.format, "virtual_size": self.virtual_size,
                "backing_chain": list(self.backing_chain), "in_use": self.in_use}


def _qemu_img() -> str:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise WincrashError("qemu-img not found: install qemu-utils (Debian/Ubuntu) or qemu-img (Fedora)")
    return exe


def _check_readable(path: Path) -> None:
    fh, _size = open_input(path, "disk image", "run as a user who can read the VM's disks, e.g. with sudo")
    fh.close()


def _run_info(path: Path, force_share: bool) -> subprocess.CompletedProcess[str]:
    cmd = [_qemu_img(), "info", "--output=json", "--backing-chain"]
    if force_share:
        cmd.append("-U")
    return subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=120)


def _looks_like_disk(path: Path) -> bool:
    """A raw image must start with a partition table (MBR/GPT: 0x55AA) or a bare NTFS/BitLocker boot sector."""
    with open(path, "rb") as fh:
        sector = fh.read(512)
    if len(sector) < 512:
        return False
    return sector[510:512] == b"\x55\xaa" or sector[3:11] in (b"NTFS    ", b"-FVE-FS-")


def probe_image(path: Path | str) -> ImageInfo:
    """Format, size and lock state of one image; WincrashError for anything that is not a usable image."""
    path = Path(path)
    _check_readable(path)
    proc = _run_info(path, force_share=False)
    in_use = False
    if proc.returncode != 0 and any(marker in proc.stderr for marker in LOCK_MARKERS):
        in_use = True
        proc = _run_info(path, force_share=True)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else "qemu-img info failed"
        raise WincrashError(f"{path}: not a readable disk image ({reason.removeprefix('qemu-img: ')})")
    try:
        chain = json.loads(proc.stdout)
        top = chain[0]
        info = ImageInfo(path=path, format=top["format"], virtual_size=int(top["virtual-size"]),
                         backing_chain=tuple(c["filename"] for c in chain[1:]), in_use=in_use)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise WincrashError(f"{path}: cannot understand qemu-img info output ({exc})") from None
    if info.format == "raw" and not _looks_like_disk(path):
        raise WincrashError(f"{path}: not a disk image (no partition table and no NTFS boot sector)")
    return info


def explain_in_use(path: Path) -> str:
    """The one-line explanation for a locked image."""
    return (f"{path}: in use by a running VM (QEMU holds its image lock); shut the VM down, "
            "or pass --force-share to read it anyway (the data may be inconsistent)")
