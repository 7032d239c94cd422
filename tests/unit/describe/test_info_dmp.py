"""`wincrash info` on crash dumps: the real triage dump, and dumps built with our own header writer."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, run_wincrash, sample_file

from wincrash.describe import describe_file
from wincrash.dmp.header import HeaderFields, build_bitmap_summary, build_header64
from wincrash.formats.context import CONTEXT_AMD64_STRUCT, CONTEXT_FULL
from wincrash.formats.dump import DUMP_HEADER64_SIZE, DUMP_TYPE_BITMAP, PAGE_SIZE


def info_json(path: Path) -> tuple[int, dict]:
    proc = run_wincrash("info", path, "--json")
    assert proc.stderr == "", proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_real_triage_dump_matches_known_facts():
    code, data = info_json(sample_file("real/triage_x64.dmp"))
    assert code == 0, data["problems"]
    assert data["kind"] == "dmp64"
    h = data["header"]
    assert h["dump_type"] == 4 and h["machine"] == "x64" and h["major_version"] == 0xF and h["build"] == 19041
    assert h["processors"] == 16
    assert h["directory_table_base"] == "0x1ad000"
    assert h["pfn_database"] == "0xfffff8047c6fc500"
    assert h["ps_loaded_module_list"] == "0xfffff8047c62a390"
    assert h["ps_active_process_head"] == "0xfffff8047c61e200"
    assert h["kd_debugger_data_block"] == "0xfffff8047c600b20"
    assert h["required_dump_space"] == 0x197915
    assert h["system_time"].startswith("2021-02-21T01:38:22.98")
    assert h["product_type"] == 1 and h["suite_mask"] == "0x110"
    bc = data["bugcheck"]
    assert bc["code"] == "0x1000007e" and bc["name"] == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"
    assert bc["parameters"] == ["0xffffffffc0000005", "0xfffff8048b58334c", "0xffff850429891ee8",
                                "0xffff850429891720"]
    t = data["triage"]
    assert t["driver_count"] == 151 and t["valid_offset"] == "0x13a288"
    assert t["drivers"][0]["name"].endswith("ntoskrnl.exe") and t["drivers"][0]["base"] == "0xfffff8047ba00000"
    assert len(t["drivers"]) == 151  # --json has every driver; the text output shows 10 of them
    assert bc["parameter_modules"] == [None, "amdppm.sys", None, None]  # parameter 2 lies in amdppm.sys
    k = t["kdbg"]
    assert k["kern_base"] == "0xfffff8047ba00000" and k["ki_processor_block"] == "0xfffff8047c6fdc80"
    assert k["mm_physical_memory_block"] == "0xfffff8047c6fc4a8"
    assert k["nt_build_lab"] == "19041.1.amd64fre.vb_release.191206-1406"
    assert (k["size_prcb"], k["offset_prcb_context"], k["offset_prcb_proc_state_context"],
            k["offset_prcb_number"]) == ("0xaf00", "0x85c0", "0x1f0", "0x24")
    assert data["context"]["cs"] == "0x10" and data["context"]["architecture"] == "x64"


def test_real_triage_text_output_names_the_bugcheck():
    proc = run_wincrash("info", sample_file("real/triage_x64.dmp"))
    assert proc.returncode == 0
    assert "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M" in proc.stdout
    assert "ntoskrnl.exe" in proc.stdout and "sound" in proc.stdout
    assert "10 of 151 drivers shown" in proc.stdout
    assert "address of the EXCEPTION_RECORD" in proc.stdout  # parameter 3 of 0x7E, meant for 0x1000007E too


def test_pagefile_with_embedded_triage_dump(tmp_path):
    real = sample_file("real/triage_x64.dmp").read_bytes()
    pagefile = tmp_path / "pagefile.bin"
    pagefile.write_bytes(real + os.urandom(4096) + bytes(4 * 2**20 - len(real) - 4096))
    code, data = info_json(pagefile)
    assert data["kind"] == "pagefile"
    assert data["pagefile"]["dump_bytes"] == len(real)  # SizeOfDump 0x13A28C + 20 secondary data blobs
    assert data["secondary_data"] == {"blobs": 20, "bytes": len(real) - 0x13A28C}
    assert data["bugcheck"]["code"] == "0x1000007e"
    assert code == 0


# --------------------------------------------------------------------------- dumps we build

def make_context(rip: int = 0xFFFFF80000001000, cs: int = 0x10) -> bytes:
    ctx = CONTEXT_AMD64_STRUCT.parse(bytes(0x4D0))
    ctx.ContextFlags, ctx.SegCs, ctx.SegSs, ctx.Rip, ctx.Rsp = CONTEXT_FULL, cs, 0x18, rip, 0xFFFFF80000100000
    ctx.MxCsr = ctx.FltSave.MxCsr = 0x1F80
    return CONTEXT_AMD64_STRUCT.build(ctx)


def fields(runs, **overrides) -> HeaderFields:
    base = dict(build=19041, directory_table_base=0x1AD000, pfn_database=0xFFFFF8047C6FC500,
                ps_loaded_module_list=0xFFFFF8047C62A390, ps_active_process_head=0xFFFFF8047C61E200,
                kd_debugger_data_block=0xFFFFF8047C600B20, number_processors=2, bugcheck_code=0x80,
                bugcheck_parameters=(0x4F4454, 0, 0, 0), runs=runs, context=make_context(),
                system_time=132583283029870000, system_uptime=10_000_000 * 3600,
                required_dump_space=DUMP_HEADER64_SIZE + sum(c for _, c in runs) * PAGE_SIZE,
                comment="wincrash test")
    base.update(overrides)
    return HeaderFields(**base)


def write_full_dump(path: Path, runs, truncate_pages: int = 0, **overrides) -> None:
    pages = sum(c for _, c in runs) - truncate_pages
    with open(path, "wb") as fh:
        fh.write(build_header64(fields(runs, **overrides)))
        fh.truncate(DUMP_HEADER64_SIZE + pages * PAGE_SIZE)


def test_full_dump_we_build_is_sound(tmp_path):
    dump = tmp_path / "full.dmp"
    write_full_dump(dump, [(1, 0x9E), (0x100, 0x700)])
    code, data = info_json(dump)
    assert code == 0, data["problems"]
    assert data["memory"]["number_of_runs"] == 2 and data["memory"]["number_of_pages"] == 0x79E
    assert data["bugcheck"]["name"] == "NMI_HARDWARE_FAILURE"
    assert data["header"]["system_uptime"] == "0d 01:00:00"
    assert data["header"]["comment"] == "wincrash test"
    assert data["kind"] == "dmp64"


def test_truncated_full_dump_is_reported(tmp_path):
    dump = tmp_path / "cut.dmp"
    write_full_dump(dump, [(1, 0x9E), (0x100, 0x700)], truncate_pages=5)
    code, data = info_json(dump)
    assert code == 1
    assert any("beyond the end of the file" in p for p in data["problems"])
    assert any("RequiredDumpSpace" in p for p in data["problems"])


def test_page_filled_fields_and_bad_cs_are_reported(tmp_path):
    dump = tmp_path / "raw2dmp-like.dmp"
    write_full_dump(dump, [(0, 16)], context=make_context(cs=0x18))
    raw = bytearray(dump.read_bytes())
    raw[0xF00:0xF04] = b"PAGE"  # exception record left as 'PAGE', as Volatility 2 raw2dmp does
    raw[0x80:0x88] = b"PAGEPAGE"  # KdDebuggerDataBlock never set
    dump.write_bytes(bytes(raw))
    code, data = info_json(dump)
    assert code == 1
    text = " | ".join(data["problems"])
    assert "45474150" in text and "KdDebuggerDataBlock" in text and "CS is 0x18" in text


def test_too_many_runs_is_reported(tmp_path):
    runs = [(i * 2, 1) for i in range(43)]
    dump = tmp_path / "runs.dmp"
    raw = bytearray(build_header64(fields(runs[:42])))
    raw[0x88:0x8C] = (43).to_bytes(4, "little")
    dump.write_bytes(bytes(raw) + bytes(43 * PAGE_SIZE))
    code, data = info_json(dump)
    assert code == 1 and any("more than the 42" in p for p in data["problems"])


def write_bitmap_dump(path: Path, runs, present: list[int], total_present_override: int | None = None) -> None:
    total_bits = max(b + c for b, c in runs)
    bitmap = bytearray((total_bits + 7) // 8)
    for pfn in present:
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    first = (DUMP_HEADER64_SIZE + 0x38 + len(bitmap) + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    count = len(present) if total_present_override is None else total_present_override
    with open(path, "wb") as fh:
        fh.write(build_header64(fields(runs, dump_type=DUMP_TYPE_BITMAP,
                                       required_dump_space=first + len(present) * PAGE_SIZE)))
        fh.write(build_bitmap_summary(b"FDMP", first, count, total_bits))
        fh.write(bitmap)
        fh.truncate(first + len(present) * PAGE_SIZE)


def test_bitmap_dump_counts_pages_left_out(tmp_path):
    dump = tmp_path / "bitmap.dmp"
    runs = [(1, 0x9E), (0x100, 0x300)]
    present = [1, 2, 3, 0x100, 0x101, 0x2FF]
    write_bitmap_dump(dump, runs, present)
    code, data = info_json(dump)
    assert code == 0, data["problems"]
    assert data["bitmap"]["present_pages"] == 6 and data["bitmap"]["signature"] == "FDMP"
    assert data["bitmap"]["pages_left_out"] == 0x9E + 0x300 - 6


def test_bitmap_count_mismatch_is_reported(tmp_path):
    dump = tmp_path / "bad-bitmap.dmp"
    write_bitmap_dump(dump, [(1, 0x9E)], [1, 2, 3], total_present_override=4)
    code, data = info_json(dump)
    assert code == 1 and any("bits set" in p for p in data["problems"])


def test_huge_sparse_dump_reads_headers_only(tmp_path):
    dump = tmp_path / "big.dmp"
    pages = 64 * 2**30 // PAGE_SIZE
    write_full_dump(dump, [(0, pages)])
    assert dump.stat().st_size > 64 * 2**30 and dump.stat().st_blocks * 512 < 2**20
    report = describe_file(dump)
    assert report.exit_code == 0 and report.sections["memory"]["number_of_pages"] == pages


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (os.urandom(5000), "not a recognised dump format"),
    (b"PAGEDU64" + bytes(100), "truncated crash dump"),
    (b"\x7fELF" + bytes(10), "truncated ELF"),
])
def test_bad_input_one_line_exit_2(tmp_path, content, message):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(content)
    proc = run_wincrash("info", bad)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_and_directory(tmp_path):
    for target, message in ((tmp_path / "nope.dmp", "no such file"), (tmp_path, "is a directory")):
        proc = run_wincrash("info", target)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is needed to drop root")
def test_permission_denied_as_unprivileged_user(tmp_path):
    secret = tmp_path / "secret.dmp"
    write_full_dump(secret, [(0, 4)])
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "wincrash",
               "info", str(secret)]
    else:  # already unprivileged: a file owned by us but without read permission
        secret.chmod(0)
        cmd = [sys.executable, "-m", "wincrash", "info", str(secret)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "permission denied" in proc.stderr and "Traceback" not in proc.stderr
    assert stat.S_IMODE(secret.stat().st_mode) in (0o600, 0)
