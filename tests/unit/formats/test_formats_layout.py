"""wincrash.formats: layouts are checked at import, and the named constants match Microsoft's values."""

from __future__ import annotations

import subprocess
import sys

import pytest
from construct import Int32ul, Int64ul, Struct
from helpers import REPO

from wincrash.formats.dump import DUMP_TYPE_NAMES, MACHINE_NAMES, DumpType, MachineType
from wincrash.formats.layout import LayoutError, check_layout, offset_of


def test_check_layout_accepts_the_documented_layout():
    check_layout("PAIR", Struct("a" / Int32ul, "b" / Int64ul), 12, {"a": 0, "b": 4})


@pytest.mark.parametrize("size,offsets,message", [
    (16, {}, "PAIR: 0xc bytes, expected 0x10"),
    (12, {"b": 8}, "PAIR.b at 0x4, expected 0x8"),
])
def test_check_layout_refuses_a_drift(size, offsets, message):
    with pytest.raises(LayoutError, match=message.replace(".", r"\.")):
        check_layout("PAIR", Struct("a" / Int32ul, "b" / Int64ul), size, offsets)


def test_offset_of_unknown_field():
    with pytest.raises(KeyError):
        offset_of(Struct("a" / Int32ul), "b")


def test_checks_run_even_under_python_O():
    """The checks raise instead of `assert`, so -O does not switch them off: a drift still stops the import."""
    code = ("import construct, wincrash.formats.layout as l\n"
            "try:\n    l.check_layout('X', construct.Struct('a' / construct.Int32ul), 8)\n"
            "except l.LayoutError:\n    print('refused')\n"
            "import wincrash.formats.dump, wincrash.formats.context, wincrash.formats.elf, "
            "wincrash.formats.kdbg, wincrash.formats.triage\n")
    proc = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "refused"


def test_dump_types_and_machines_have_microsoft_values():
    assert [int(t) for t in DumpType] == [1, 2, 4, 5, 6, 8, 9, 10]
    assert (DumpType.FULL, DumpType.BITMAP, DumpType.COMPLETE_MEMORY) == (1, 5, 10)
    assert (MachineType.AMD64, MachineType.I386, MachineType.ARM64) == (0x8664, 0x14C, 0xAA64)
    assert set(DUMP_TYPE_NAMES) <= set(DumpType) and set(MACHINE_NAMES) == set(MachineType)
