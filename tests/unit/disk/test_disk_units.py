"""The pure parts of wincrash.disk (no appliance): fast."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from helpers import sample_file

from wincrash.disk import hive
from wincrash.disk.crashcontrol import DUMP_TYPES, check_pagefile, parse_size, plan
from wincrash.disk.grab import local_name
from wincrash.disk.image import probe_image
from wincrash.disk.locate import GuestFile, WindowsInstall, mount_point, parse_paging_files
from wincrash.disk.pagefile import extract_dump, starts_with_dump
from wincrash.errors import WincrashError

MIB = 1 << 20


def test_parse_paging_files() -> None:
    assert parse_paging_files(["?:\\pagefile.sys"]) == [("?:\\pagefile.sys", None, None)]
    assert parse_paging_files(["C:\\pagefile.sys 1024 4096", "D:\\swap\\pagefile.sys 0 0"]) == [
        ("C:\\pagefile.sys", 1024, 4096), ("D:\\swap\\pagefile.sys", 0, 0)]
    assert parse_paging_files("\\??\\C:\\pagefile.sys") == [("C:\\pagefile.sys", None, None)]
    assert parse_paging_files(None) == [] and parse_paging_files(["garbage"]) == []


def test_plan_per_dump_type() -> None:
    names = {c.name: c.value for c in plan("automatic", nmi=True, keyboard=False, no_auto_reboot=True)}
    assert names == {"CrashDumpEnabled": 7, "NMICrashDump": 1, "Overwrite": 1, "AlwaysKeepMemoryDump": 1,
                     "DumpFile": "%SystemRoot%\\MEMORY.DMP", "AutoReboot": 0}
    active = {c.name: c.value for c in plan("active", nmi=False, keyboard=True, no_auto_reboot=False)}
    assert active["CrashDumpEnabled"] == 1 and active["FilterPages"] == 1 and active["NMICrashDump"] == 0
    assert "AutoReboot" not in active
    keys = [c.key for c in plan("kernel", True, True, True) if c.name == "CrashOnCtrlScroll"]
    assert keys == [("Services", "kbdhid", "Parameters"), ("Services", "i8042prt", "Parameters")]
    assert {DUMP_TYPES[d] for d in ("complete", "kernel", "automatic")} == {1, 2, 7}
    with pytest.raises(WincrashError, match="--dump"):
        plan("everything", True, False, True)


def test_parse_size() -> None:
    assert parse_size("8G") == 8 << 30 and parse_size("8GiB") == 8 << 30
    assert parse_size("4096") == 4096 * MIB and parse_size("512M") == 512 * MIB and parse_size(None) is None
    with pytest.raises(WincrashError, match="--ram"):
        parse_size("lots")


def _install(paging: list[str] | None) -> WindowsInstall:
    return WindowsInstall(device="/dev/sda2", systemroot="/Windows", found_by="scan",
                          settings={"PagingFiles": paging})


def test_check_pagefile_against_ram() -> None:
    ram = 8 << 30
    fixed_small = check_pagefile(_install(["C:\\pagefile.sys 1024 4096"]), "complete", ram, None)
    assert len(fixed_small) == 1 and "4,096 MiB" in fixed_small[0] and "8,193 MiB" in fixed_small[0]
    assert check_pagefile(_install(["C:\\pagefile.sys 9000 9000"]), "complete", ram, None) == []
    managed = check_pagefile(_install(["?:\\pagefile.sys"]), "complete", ram, 2 << 30)
    assert len(managed) == 1 and "system-managed" in managed[0]
    assert check_pagefile(_install(["?:\\pagefile.sys"]), "complete", ram, 9 << 30) == []
    other_drive = check_pagefile(_install(["D:\\pagefile.sys"]), "kernel", ram, None)
    assert len(other_drive) == 1 and "no paging file on the boot volume C:" in other_drive[0]
    assert "--ram" in check_pagefile(_install(["?:\\pagefile.sys"]), "complete", None, None)[0]
    assert check_pagefile(_install(["?:\\pagefile.sys"]), "kernel", None, None) == []


def test_local_names() -> None:
    install = _install(None)

    def name(windows_path: str) -> Path:
        return local_name(install, GuestFile("x", windows_path, "/m", "/dev/sda2", 0))

    assert name("C:\\pagefile.sys") == Path("pagefile.sys")
    assert name("C:\\Windows\\Minidump\\a.dmp") == Path("Minidump/a.dmp")
    assert name("c:\\windows\\MEMORY.DMP") == Path("MEMORY.DMP")
    assert name("D:\\pagefile.sys") == Path("D/pagefile.sys")
    assert name("C:\\..\\..\\etc\\passwd") == Path("etc/passwd")  # never outside the output folder
    assert mount_point("/dev/sda2") == "/sda2" and mount_point("/dev/mapper/bitlk0") == "/mapper_bitlk0"


def test_hive_value_codec() -> None:
    for vtype, value in ((hive.REG_DWORD, 7), (hive.REG_EXPAND_SZ, "%SystemRoot%\\MEMORY.DMP"),
                         (hive.REG_SZ, "x"), (hive.REG_MULTI_SZ, ["a", "b c"])):
        assert hive.decode_value(vtype, hive.encode_value(vtype, value)) == value


def test_cut_dump_from_pagefile(tmp_path: Path) -> None:
    triage = sample_file("real/triage_x64.dmp").read_bytes()
    size_of_dump = int.from_bytes(triage[0x2004:0x2008], "little")
    pagefile = tmp_path / "pagefile.sys"
    pagefile.write_bytes(triage + random.Random(0).randbytes(MIB))
    assert starts_with_dump(pagefile)
    dump = extract_dump(pagefile, tmp_path / "cut.dmp", progress=False)
    # the dump proper (SizeOfDump) and the secondary data blobs after it: the whole real file, byte for byte
    assert dump.size == dump.extent == len(triage) > size_of_dump
    assert (tmp_path / "cut.dmp").read_bytes() == triage
    assert (tmp_path / "cut.dmp").stat().st_mode & 0o777 == 0o600
    assert dump.bugcheck is not None and dump.bugcheck["code"].lower() == "0x1000007e"

    short = tmp_path / "short.sys"
    short.write_bytes(triage[: size_of_dump // 2])
    truncated = extract_dump(short, tmp_path / "short.dmp", progress=False)
    assert truncated.size == size_of_dump // 2 and truncated.extent == size_of_dump
    assert any("truncated" in p for p in truncated.problems) and not truncated.sound

    reused = tmp_path / "reused.sys"
    reused.write_bytes(random.Random(1).randbytes(64 * 1024))
    assert not starts_with_dump(reused)


def test_probe_image(tmp_path: Path) -> None:
    qcow = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(qcow), "64M"], check=True, capture_output=True)
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", qcow.name, "-F", "qcow2", str(top)], check=True,
                   capture_output=True)
    info = probe_image(top)
    assert (info.format, info.virtual_size, info.in_use) == ("qcow2", 64 * MIB, False)
    assert [Path(p).name for p in info.backing_chain] == ["d.qcow2"]
    raw = tmp_path / "disk.img"
    with open(raw, "wb") as fh:
        fh.truncate(MIB)
    with pytest.raises(WincrashError, match="not a disk image"):
        probe_image(raw)  # all zeros: no partition table
    with open(raw, "r+b") as fh:
        fh.seek(510)
        fh.write(b"\x55\xaa")
    assert probe_image(raw).format == "raw"
    os.chmod(raw, 0o644)
