"""`wincrash convert` of an existing DMP (issue 10): the input's crash context survives, a kernel dump's
absent pages are never invented, a bitmap of millions of one-page runs stays cheap; and what `info` says.

Header fields are read at their DUMP_HEADER64 offsets (struct, not wincrash's parser); the guests come
from the testkit generator, converted first from their QEMU ELF.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_wincrash
from wincrash_testkit.synth.guest import GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf

PAGE = 0x1000
CONTEXT = 0x348  # DUMP_HEADER64.ContextRecord; CONTEXT_AMD64.Rsp at +0x98, Rip at +0xF8


def header(path: Path) -> dict:
    raw = _head(path)
    return {
        "dtb": struct.unpack_from("<Q", raw, 0x10)[0], "cpus": struct.unpack_from("<I", raw, 0x34)[0],
        "code": struct.unpack_from("<I", raw, 0x38)[0], "params": struct.unpack_from("<4Q", raw, 0x40),
        "kdbg": struct.unpack_from("<Q", raw, 0x80)[0], "context": raw[CONTEXT:CONTEXT + 0x4D0],
        "rip": struct.unpack_from("<Q", raw, CONTEXT + 0xF8)[0],
        "rsp": struct.unpack_from("<Q", raw, CONTEXT + 0x98)[0],
    }


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(0x2040)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """A crashed 2-vCPU guest as ELF, converted to a full and a kernel DMP (the inputs of these tests)."""
    tmp = tmp_path_factory.mktemp("dmpin")
    guest = generate(GuestSpec(build=19041, cpus=2, ram_mib=1024, seed=77, crashed=True))
    elf = tmp / "g.elf"
    with open(elf, "wb") as fh:
        write_qemu_elf(fh, guest)
    for fmt in ("full", "kernel"):
        run_wincrash("convert", elf, "-o", tmp / f"g-{fmt}.dmp", "--format", fmt, check=True)
    return guest, tmp


@pytest.mark.parametrize("fmt", ["bitmap", "full"])
def test_dmp_input_keeps_its_crash_context(dumps, fmt):
    guest, tmp = dumps
    src = tmp / "g-full.dmp"
    out = tmp / f"re-{fmt}.dmp"
    proc = run_wincrash("convert", src, "-o", out, "--format", fmt, "--json", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "no processor's registers are known" not in proc.stderr
    before, after = header(src), header(out)
    assert before["rip"] >= 0xFFFF800000000000 and before["rsp"]  # the ELF conversion had the vCPU's registers
    for field in ("dtb", "cpus", "code", "params", "kdbg", "context"):
        assert after[field] == before[field], field
    assert after["cpus"] == guest.truth["cpus"] and after["code"] == guest.truth["bugcheck"]["code"]
    methods = json.loads(proc.stdout)["windows"]["methods"]
    assert "input dump's header" in methods["directory_table_base"]  # not found again by a scan
    assert "KdDebuggerDataBlock" in methods["kdbg"]


@pytest.mark.parametrize(("field", "value"), [(0x38, 0x2E), (0x34, 0x1F25)])  # SegCs, MxCsr (FltSave keeps 0x1F80)
def test_dmp_input_with_a_damaged_header_context_is_not_kept(dumps, tmp_path, field, value):
    """The CI fuzz run found it: a DMP whose header ContextRecord holds a bad CS or an MxCsr that differs from
    FltSave.MxCsr was copied as is, and the written dump then failed its own `info` check."""
    _guest, tmp = dumps
    src = tmp_path / "bad.dmp"
    subprocess.run(["cp", "--sparse=always", tmp / "g-full.dmp", src], check=True)
    with open(src, "r+b") as fh:
        fh.seek(CONTEXT + field)
        fh.write(struct.pack("<H" if field == 0x38 else "<I", value))
    out = tmp_path / "re.dmp"
    proc = run_wincrash("convert", src, "-o", out, "--format", "bitmap")
    assert proc.returncode == 0, proc.stderr
    assert "header context is not a Windows context" in proc.stderr
    written = header(out)["context"]
    assert struct.unpack_from("<H", written, 0x38)[0] in (0x10, 0x33)
    assert struct.unpack_from("<I", written, 0x34)[0] == struct.unpack_from("<I", written, 0x100 + 0x18)[0]
    assert run_wincrash("info", out).returncode == 0


@pytest.mark.parametrize("fmt", ["full", "bitmap"])
def test_kernel_dump_input_refuses_complete_output(dumps, fmt):
    _, tmp = dumps
    out = tmp / f"k-{fmt}.dmp"
    proc = run_wincrash("convert", tmp / "g-kernel.dmp", "-o", out, "--format", fmt)
    assert proc.returncode != 0 and not out.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wincrash: error:"), proc.stderr
    assert "'SDMP'" in lines[0] and "--format kernel" in lines[0]


def test_kernel_dump_input_to_kernel_keeps_only_its_pages(dumps):
    _, tmp = dumps
    src, out = tmp / "g-kernel.dmp", tmp / "k-again.dmp"
    run_wincrash("convert", src, "-o", out, "--format", "kernel", check=True)

    def bitmap(path: Path) -> int:
        with open(path, "rb") as fh:
            fh.seek(0x2030)
            bits = struct.unpack("<Q", fh.read(8))[0]
            return int.from_bytes(fh.read((bits + 7) // 8), "little")

    held, kept = bitmap(src), bitmap(out)
    assert kept and kept & ~held == 0  # no page the input left out is written (as zeros or otherwise)
    assert header(out)["context"] == header(src)["context"]


def _alternating_bitmap_dmp(path: Path, template: Path, bitmap_bytes: int) -> None:
    """A bitmap DMP whose bitmap alternates present/absent (bitmap_bytes * 4 one-page runs), FirstPage
    valid, and every present page a hole of a sparse file (the robustness case dmp-bitmap-alternating-hang)."""
    head = bytearray(_head(template)[:0x2000])
    struct.pack_into("<I", head, 0xF98, 5)  # DumpType: bitmap
    first = (0x2038 + bitmap_bytes + PAGE - 1) & ~(PAGE - 1)
    present = bitmap_bytes * 4
    summary = b"FDMP" + b"DUMP" + b"PAGE" * 6 + struct.pack("<QQQ", first, present, bitmap_bytes * 8)
    with open(path, "wb") as fh:
        fh.write(head + summary + b"\x55" * bitmap_bytes)
        fh.truncate(first + present * PAGE)


def test_alternating_bitmap_input_is_bounded(dumps, tmp_path):
    _, tmp = dumps
    alt = tmp_path / "alt.dmp"
    _alternating_bitmap_dmp(alt, tmp / "g-full.dmp", 1 << 20)  # 4 Mi one-page runs, 16 GiB sparse
    code = ("import resource, subprocess, sys, time; t = time.monotonic(); "
            "p = subprocess.run([sys.executable, '-m', 'wincrash', 'convert', sys.argv[1], '-o', sys.argv[2]], "
            "capture_output=True, text=True, timeout=120); "
            "print(p.returncode, time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "print(p.stderr, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, alt, tmp_path / "x.dmp"], capture_output=True, text=True,
                          timeout=180)
    rc, seconds, rss_kib = proc.stdout.split()
    assert int(rc) != 0 and not (tmp_path / "x.dmp").exists()  # there is no Windows in it
    assert float(seconds) < 40, f"{seconds} s"  # main before the fix: 32 s on a quiet machine
    assert int(rss_kib) < 300 * 1024, f"{int(rss_kib) // 1024} MiB"  # before: 1 GiB
    assert "raw image" not in proc.stderr and "'FDMP'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_info_titles_bitmap_dumps_by_what_they_hold(dumps):
    _, tmp = dumps
    kernel = run_wincrash("info", tmp / "g-kernel.dmp", check=True).stdout
    assert "kernel memory dump (bitmap, 'SDMP')" in kernel.splitlines()[0]
    assert "not in the dump" in kernel  # a kernel dump does leave pages out
    run_wincrash("convert", tmp / "g-full.dmp", "-o", tmp / "complete.dmp", "--format", "bitmap", "--force",
                 check=True)
    complete = run_wincrash("info", tmp / "complete.dmp", check=True).stdout
    assert "complete memory dump (bitmap, 'FDMP')" in complete.splitlines()[0]
    assert "not in the dump" not in complete  # nothing left out: no "0 of N pages" note


@pytest.mark.parametrize("json_out", [False, True])
def test_info_into_a_closed_pipe_exits_quietly(dumps, json_out):
    _, tmp = dumps
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte (what `| head -1` leads to)
    try:
        proc = subprocess.run([sys.executable, "-m", "wincrash", "info", tmp / "g-full.dmp",
                               *(["--json"] if json_out else [])],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_convert_help_names_every_input_kind():
    text = " ".join(run_wincrash("convert", "--help", check=True, env={"COLUMNS": "200"}).stdout.split())
    for kind in ("ELF", "savevm", "libvirt save", "compressed", "kdump", "LiME", "raw", "DMP"):
        assert kind in text, kind


