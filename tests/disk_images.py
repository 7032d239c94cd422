"""Test disk images for `grab-pagefile` and `prepare`, built once per session with a real appliance.

The layout mimics Windows guests as QEMU sees them:
- disk A: qcow2 on top of a qcow2 backing file, MBR, two NTFS partitions ("System Reserved" and
  C:). The backing file holds the Windows tree with the real Windows 10 1709 SYSTEM hive and
  cmd.exe (so libguestfs inspection recognises it); the top layer holds what a crash writes:
  pagefile.sys starting with the real triage dump, swapfile.sys, MEMORY.DMP, minidumps and a
  live kernel report.
- prepare disk: a second qcow2 on the same backing file (prepare writes into it).
- disk B: raw, GPT, an EFI FAT partition and NTFS C: with the real Windows 7 SYSTEM hive, no
  cmd.exe (inspection fails: the fallback scan must find it) and a pagefile without a dump.
- disk C: raw, MBR, ext4 only (no NTFS).
- disk D: raw, MBR, NTFS without Windows.
Two appliance launches in all (the backing file must be complete before its overlay is written).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import random
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import SHARED_SAMPLES

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")

MIB = 1 << 20
HIVE10 = SHARED_SAMPLES / "hives" / "SYSTEM_WIN_10_1709.xz"
HIVE7 = SHARED_SAMPLES / "hives" / "SYSTEM.xz"
TRIAGE = SHARED_SAMPLES / "real" / "triage_x64.dmp"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class DiskSet:
    """The built images and the exact bytes put into them (guest path -> host file)."""

    root: Path
    top_a: Path
    base_a: Path
    prepare_a: Path
    disk_b: Path
    disk_c: Path
    disk_d: Path
    hive10: Path
    hive7: Path
    triage: Path
    files_a: dict[str, Path] = field(default_factory=dict)  # guest path on C: -> source
    files_b: dict[str, Path] = field(default_factory=dict)


def _blob(path: Path, size: int, seed: int, prefix: bytes = b"") -> Path:
    data = prefix + random.Random(seed).randbytes(size - len(prefix))
    path.write_bytes(data)
    return path


def _pe64_exe(path: Path) -> Path:
    """A minimal PE32+ x86-64 header: libguestfs inspection reads cmd.exe's architecture with `file`."""
    dos = bytearray(0x80)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x80)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, 0xF0, 0x22)
    optional = bytearray(0xF0)
    struct.pack_into("<H", optional, 0, 0x20B)  # PE32+
    struct.pack_into("<H", optional, 68, 3)  # console subsystem
    data = bytes(dos) + coff + bytes(optional)
    path.write_bytes(data + bytes(4096 - len(data)))
    return path


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def _mkdir_upload(g, mount: str, files: dict[str, Path]) -> None:
    for guest, source in files.items():
        g.mkdir_p(mount + os.path.dirname(guest))
        g.upload(str(source), mount + guest)


def build_disks(tmp_path_factory: pytest.TempPathFactory) -> DiskSet:
    """Build every test image (about a minute: two appliance launches under TCG)."""
    for sample in (HIVE10, HIVE7, TRIAGE):
        if not sample.is_file():
            pytest.skip(f"real sample {sample.name} not available ({sample} is absent)")
    guestfs = pytest.importorskip("guestfs", reason="python3-guestfs (Debian) is not installed")
    root = tmp_path_factory.mktemp("disks")
    src = root / "src"
    src.mkdir()
    hive10 = src / "SYSTEM10"
    hive10.write_bytes(lzma.decompress(HIVE10.read_bytes()))
    hive7 = src / "SYSTEM7"
    hive7.write_bytes(lzma.decompress(HIVE7.read_bytes()))
    triage = TRIAGE.read_bytes()
    pagefile_dump = src / "pagefile_dump.sys"
    pagefile_dump.write_bytes(triage + random.Random(1).randbytes(6 * MIB - len(triage)))
    ds = DiskSet(root=root, top_a=root / "a-top.qcow2", base_a=root / "a-base.qcow2",
                 prepare_a=root / "a-prepare.qcow2", disk_b=root / "b-gpt.img", disk_c=root / "c-ext4.img",
                 disk_d=root / "d-nowin.img", hive10=hive10, hive7=hive7, triage=TRIAGE)
    base_files = {
        "/Windows/System32/config/SYSTEM": hive10,
        "/Windows/System32/cmd.exe": _pe64_exe(src / "cmd.exe"),
        "/Windows/Minidump/010121-1111-01.dmp": _blob(src / "old.dmp", 70000, 3, b"PAGEDU64"),
    }
    ds.files_a = {
        **base_files,
        "/pagefile.sys": pagefile_dump,
        "/swapfile.sys": _blob(src / "swapfile.sys", 256 * 1024, 4),
        "/Windows/MEMORY.DMP": _blob(src / "MEMORY.DMP", 3 * MIB + 123, 5, b"PAGEDU64"),
        "/Windows/Minidump/022121-2222-01.dmp": _blob(src / "new.dmp", 300000, 6, b"PAGEDU64"),
        "/Windows/LiveKernelReports/WATCHDOG/WD-20210221-0138.dmp": _blob(src / "wd.dmp", 120000, 7, b"PAGEDU64"),
    }
    ds.files_b = {
        "/Windows/System32/config/SYSTEM": hive7,
        "/pagefile.sys": _blob(src / "pagefile_nodump.sys", 2 * MIB, 8),
        "/Windows/Minidump/030321-3333-01.dmp": _blob(src / "b.dmp", 50000, 9, b"PAGEDUMP"),
    }
    _qemu_img("create", "-f", "qcow2", str(ds.base_a), "160M")
    for raw in (ds.disk_b, ds.disk_c, ds.disk_d):
        with open(raw, "wb") as fh:
            fh.truncate(96 * MIB)

    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(ds.base_a), format="qcow2")
    for raw in (ds.disk_b, ds.disk_c, ds.disk_d):
        g.add_drive_opts(str(raw), format="raw")
    g.launch()
    # disk A (base): MBR, System Reserved + C:
    g.part_init("/dev/sda", "mbr")
    g.part_add("/dev/sda", "p", 2048, 2048 + 32 * 2048 - 1)
    g.part_add("/dev/sda", "p", 2048 + 32 * 2048, -2048)
    g.part_set_mbr_id("/dev/sda", 1, 0x07)
    g.part_set_mbr_id("/dev/sda", 2, 0x07)
    g.mkfs("ntfs", "/dev/sda1")
    g.mkfs("ntfs", "/dev/sda2")
    # disk B: GPT, EFI + C:
    g.part_init("/dev/sdb", "gpt")
    g.part_add("/dev/sdb", "p", 2048, 2048 + 16 * 2048 - 1)
    g.part_add("/dev/sdb", "p", 2048 + 16 * 2048, -2048)
    g.mkfs("vfat", "/dev/sdb1")
    g.mkfs("ntfs", "/dev/sdb2")
    # disk C: ext4 only; disk D: NTFS without Windows
    g.part_disk("/dev/sdc", "mbr")
    g.mkfs("ext4", "/dev/sdc1")
    g.part_disk("/dev/sdd", "mbr")
    g.mkfs("ntfs", "/dev/sdd1")
    for dev, point in (("/dev/sda1", "/a1"), ("/dev/sda2", "/a2"), ("/dev/sdb2", "/b2"), ("/dev/sdd1", "/d1")):
        g.mkmountpoint(point)
        g.mount(dev, point)
    g.write("/a1/bootmgr", b"boot manager")
    _mkdir_upload(g, "/a2", base_files)
    _mkdir_upload(g, "/b2", ds.files_b)
    g.mkdir_p("/b2/Windows/System32")  # no cmd.exe: inspection must fail, the scan must find it
    g.write("/d1/readme.txt", b"data disk")
    g.umount_all()
    g.sync()
    g.shutdown()
    g.close()

    for top in (ds.top_a, ds.prepare_a):
        _qemu_img("create", "-f", "qcow2", "-b", ds.base_a.name, "-F", "qcow2", str(top))
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(ds.top_a), format="qcow2")
    g.launch()
    g.mount("/dev/sda2", "/")
    _mkdir_upload(g, "", {k: v for k, v in ds.files_a.items() if k not in base_files})
    g.umount_all()
    g.sync()
    g.shutdown()
    g.close()
    for path in root.glob("*.*"):
        if path.is_file():
            path.chmod(0o644)
    return ds
