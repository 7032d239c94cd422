"""The symbol tables (the test kit's base + per-build overrides, and the product's few offsets) must agree with the
real ntkrnlmp.pdb symbol tables (ISF) they were copied from."""

from __future__ import annotations

import json
import lzma
from functools import cache

import pytest
from helpers import SHARED_SAMPLES
from wincrash_testkit.synth.builds import BUILDS, kdbg_offset_fields
from wincrash_testkit.synth.symbols import BASE_OFFSETS, TABLES

from wincrash.windows import offsets as product

ISF_DIR = SHARED_SAMPLES / "isf"


@cache
def _isf(guid: str) -> dict:
    path = ISF_DIR / f"{guid}-1.json.xz"
    if not path.is_file():
        pytest.skip(f"ISF table {path.name} not available ({ISF_DIR} is absent)")
    with lzma.open(path, "rt") as fh:
        return json.load(fh)


def _type(isf: dict, name: str) -> dict:
    if name == "_KLDR_DATA_TABLE_ENTRY" and name not in isf["user_types"]:
        name = "_LDR_DATA_TABLE_ENTRY"  # 7601/9600 PDBs: the table documents this fallback
    return isf["user_types"][name]


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_table_matches_isf(build: int) -> None:
    wb = BUILDS[build]
    isf = _isf(wb.pdb_guid)
    pdb = isf["metadata"]["windows"]["pdb"]
    assert (pdb["GUID"], pdb["age"], pdb["database"]) == (wb.pdb_guid, wb.pdb_age, "ntkrnlmp.pdb")
    for key, value in wb.offsets.items():
        type_name, field_name = key.split(".")
        assert _type(isf, type_name)["fields"][field_name]["offset"] == value, key
    for type_name, size in wb.sizes.items():
        assert _type(isf, type_name)["size"] == size, type_name
    for name, rva in wb.rvas.items():
        assert isf["symbols"][name]["address"] == rva, name
    assert len(wb.offsets) > 60 and len(wb.rvas) > 30


@pytest.mark.parametrize("table", TABLES, ids=lambda t: str(t.build))
def test_absent_fields_are_absent_from_isf(table) -> None:
    """A base field a build's table leaves out is really not in that build's PDB (not a forgotten override)."""
    isf = _isf(table.pdb_guid)
    assert set(table.absent) <= set(BASE_OFFSETS)
    for key in table.absent:
        type_name, field_name = key.split(".")
        if type_name == "_KLDR_DATA_TABLE_ENTRY":  # 7601/9600: the PDB has no such type at all
            assert type_name not in isf["user_types"], key
        else:
            assert field_name not in isf["user_types"][type_name]["fields"], key


def test_overrides_are_real_overrides() -> None:
    """Each per-build override differs from the base (the tables hold no copied constants)."""
    for table in TABLES:
        for key, value in table.offsets.items():
            assert BASE_OFFSETS.get(key) != value, (table.build, key)


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_product_table_agrees(build: int) -> None:
    """wincrash.windows.offsets (what the converter uses without symbols) holds the same values as the kit's."""
    known, wb = product.BUILDS[build], BUILDS[build]
    assert known.name == wb.name
    for key, value in known.offsets.items():
        assert wb.off(key) == value, key
    assert product.KPCR_PRCB_OFFSET == wb.off("_KPCR.Prcb")
    assert wb.off("_KPROCESS.DirectoryTableBase") == 0x28  # locate.py relies on it for every build
    assert sorted(product.BUILDS) == sorted(BUILDS)


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_isf_fields_the_converter_needs_are_all_there(build: int) -> None:
    """Every field DESIGN §3 / issue 3 rely on is in the table for every build."""
    wb = BUILDS[build]
    for key in ("_KPCR.Self", "_KPCR.CurrentPrcb", "_KPCR.Prcb", "_KPCR.IdtBase", "_KPCR.GdtBase",
                "_KPRCB.CurrentThread", "_KPRCB.Number", "_KPRCB.ProcessorState", "_KPRCB.Context",
                "_KPROCESSOR_STATE.SpecialRegisters", "_KPROCESSOR_STATE.ContextFrame", "_KSPECIAL_REGISTERS.Cr3",
                "_KLDR_DATA_TABLE_ENTRY.DllBase", "_KLDR_DATA_TABLE_ENTRY.SizeOfImage",
                "_KLDR_DATA_TABLE_ENTRY.FullDllName", "_KLDR_DATA_TABLE_ENTRY.BaseDllName",
                "_KUSER_SHARED_DATA.InterruptTime", "_KUSER_SHARED_DATA.SystemTime",
                "_KUSER_SHARED_DATA.NtProductType", "_KUSER_SHARED_DATA.SuiteMask"):
        assert key in wb.offsets, (build, key)
    assert wb.off("_KPCR.Prcb") == 0x180
    assert wb.off("_KUSER_SHARED_DATA.SystemTime") == 0x14
    assert ("_KUSER_SHARED_DATA.NtBuildNumber" in wb.offsets) == (build >= 14393)


def test_kdbg_fields_match_real_triage_dump() -> None:
    """The real 19041 triage dump's embedded KDBG (samples README) agrees with the derived Offset* fields."""
    f = kdbg_offset_fields(BUILDS[19041])
    assert (f["SizePrcb"], f["OffsetPrcbContext"], f["OffsetPrcbProcStateContext"], f["OffsetPrcbNumber"],
            f["OffsetPcrContainedPrcb"]) == (0xAF00, 0x85C0, 0x1F0, 0x24, 0x180)
    assert BUILDS[19041].kdbg_size == 0x380
    assert BUILDS[7601].kdbg_size == 0x340 and not BUILDS[7601].kdbg_encoded
    assert "OffsetPrcbDpcStack" not in kdbg_offset_fields(BUILDS[7601])
