"""DumpType 8, 9 and 10 ('RDMP' layout) are named and summarised; the bug check table is complete."""

from __future__ import annotations

import json
import lzma
import struct
from pathlib import Path

import pytest
from helpers import run_wincrash, sample_file

from wincrash.dmp.header import HeaderFields, build_header64
from wincrash.formats.bugcheck import BUGCHECK_NAMES, bugcheck_name, parameter_meanings
from wincrash.formats.context import CONTEXT_AMD64_STRUCT, CONTEXT_FULL
from wincrash.formats.dump import DUMP_HEADER64_SIZE, PAGE_SIZE


def info_json(path: Path) -> tuple[int, dict]:
    proc = run_wincrash("info", path, "--json")
    assert proc.stderr == "", proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def header(runs, dump_type: int, required: int) -> bytes:
    ctx = CONTEXT_AMD64_STRUCT.parse(bytes(0x4D0))
    ctx.ContextFlags, ctx.SegCs, ctx.SegSs, ctx.Rip = CONTEXT_FULL, 0x10, 0x18, 0xFFFFF80000001000
    ctx.MxCsr = ctx.FltSave.MxCsr = 0x1F80
    return build_header64(HeaderFields(
        build=22621, directory_table_base=0x1AD000, pfn_database=0xFFFFEC0000000000,
        ps_loaded_module_list=0xFFFFF8047C62A390, ps_active_process_head=0xFFFFF8047C61E200,
        kd_debugger_data_block=0xFFFFF8047C600B20, number_processors=2, bugcheck_code=0xE2,
        bugcheck_parameters=(0, 0, 0, 0), runs=runs, context=CONTEXT_AMD64_STRUCT.build(ctx),
        dump_type=dump_type, required_dump_space=required, system_time=132583283029870000))


def write_rdmp(path: Path, dump_type: int, runs, ranges, total_override: int | None = None) -> int:
    """An RDMP dump as kdmp-parser reads it; returns the size the summary describes."""
    metadata = 0x10 + 0x10 * len(ranges)
    first = DUMP_HEADER64_SIZE + 0x20 + metadata
    pages = sum(c for _, c in ranges)
    summary = struct.pack("<I4s4sIQQ", 0x40, b"RDMP", b"DUMP", 0, metadata, first)
    if dump_type == 10:
        total = pages if total_override is None else total_override
        summary += struct.pack("<IHHQ", len(ranges), 0, 0, total)
    else:
        summary += bytes(0x10)
    summary += b"".join(struct.pack("<QQ", b, c) for b, c in ranges)
    end = first + pages * PAGE_SIZE
    with open(path, "wb") as fh:
        fh.write(header(runs, dump_type, end) + summary)
        fh.truncate(end)
    return end


@pytest.mark.parametrize("dump_type, scope", [(8, "kernel memory"), (9, "kernel and user memory"),
                                              (10, "complete memory")])
def test_rdmp_dumps_are_named_and_summarised(tmp_path, dump_type, scope):
    runs = [(1, 0x9E), (0x100, 0x300)]
    ranges = runs if dump_type == 10 else [(1, 4), (0x100, 0x20), (0x2F0, 0x10)]
    dump = tmp_path / f"t{dump_type}.dmp"
    end = write_rdmp(dump, dump_type, runs, ranges)
    code, data = info_json(dump)
    assert code == 0, data["problems"]
    assert "unknown" not in data["title"] and scope in data["header"]["dump_type_name"]
    r = data["rdmp"]
    assert r["scope"] == scope and r["ranges"] == len(ranges)
    assert r["present_pages"] == sum(c for _, c in ranges)
    assert r["pages_left_out"] == 0x9E + 0x300 - r["present_pages"]
    assert data["header"]["extent"] == end


def test_rdmp_complete_dump_with_a_wrong_page_count_is_reported(tmp_path):
    dump = tmp_path / "bad.dmp"
    write_rdmp(dump, 10, [(1, 0x9E)], [(1, 0x9E)], total_override=0x9F)
    code, data = info_json(dump)
    assert code == 1 and any("TotalNumberOfPages" in p for p in data["problems"]), data["problems"]


def test_case_dumptype_10_is_named_not_unknown(tmp_path):
    """../shared/samples/cases/dumptype-10: a full dump with only DumpType patched to 10."""
    dump = tmp_path / "t10.dmp"
    dump.write_bytes(lzma.decompress(sample_file("cases/dumptype-10/t10.dmp.xz").read_bytes()))
    code, data = info_json(dump)
    assert data["header"]["dump_type_name"] == "complete memory dump ('RDMP' layout)"
    assert "unknown" not in data["title"]
    assert not any("DumpType 10" in p and "unknown" in p for p in data["problems"])
    # The case reproduces the header field only: the missing 'RDMP' summary is what is wrong.
    assert [p for p in data["problems"] if "'RDMP' summary" in p] == data["problems"] and code == 1
    proc = run_wincrash("convert", dump, "-o", tmp_path / "x.dmp")
    assert proc.returncode == 2 and "complete memory dump" in proc.stderr


def test_bugcheck_table_covers_the_public_reference():
    assert len(BUGCHECK_NAMES) >= 400
    assert bugcheck_name(0x1C8) == "MANUALLY_INITIATED_POWER_BUTTON_HOLD"
    assert bugcheck_name(0x133) == "DPC_WATCHDOG_VIOLATION" and bugcheck_name(0x1) == "APC_INDEX_MISMATCH"
    assert bugcheck_name(0x1000000A) == "IRQL_NOT_LESS_OR_EQUAL_M" and bugcheck_name(0x7FFF) is None
    assert len(set(BUGCHECK_NAMES.values())) == len(BUGCHECK_NAMES)
    common = (0x0A, 0x1E, 0x3B, 0x50, 0x7E, 0x7F, 0x80, 0x9F, 0xA0, 0xC2, 0xC4, 0xD1, 0xEF, 0x101, 0x124, 0x133,
              0x139, 0x13A, 0x144, 0x154, 0x15F)
    assert all(parameter_meanings(c) and len(parameter_meanings(c)) == 4 for c in common)


def test_bugcheck_parameter_meanings_in_the_report(tmp_path):
    dump = tmp_path / "t10.dmp"
    write_rdmp(dump, 10, [(1, 16)], [(1, 16)])
    raw = bytearray(dump.read_bytes())
    struct.pack_into("<I4xQQQQ", raw, 0x38, 0x139, 3, 0xFFFF8000AAAA0000, 0xFFFF8000AAAA1000, 0)
    dump.write_bytes(bytes(raw))
    code, data = info_json(dump)
    bc = data["bugcheck"]
    assert bc["name"] == "KERNEL_SECURITY_CHECK_FAILURE"
    assert "LIST_ENTRY" in bc["meaning"][0]["meaning"] and bc["meaning"][1]["value"] == "0xffff8000aaaa0000"
    text = run_wincrash("info", dump).stdout
    assert "KTRAP_FRAME" in text
