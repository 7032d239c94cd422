"""KDBG encoding against the DESIGN formula, and the make_guest.py command line."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from wincrash_testkit.synth import kdbg_codec

REPO = Path(__file__).resolve().parents[3]
M64 = (1 << 64) - 1
u64 = st.integers(min_value=0, max_value=M64)


def design_decode(q: int, never: int, always: int, flag_va: int) -> int:
    r = (never & 0xFF) % 64
    x = q ^ never
    x = ((x << r) | (x >> (64 - r))) & M64
    return int.from_bytes((x ^ flag_va).to_bytes(8, "little"), "big") ^ always


@given(u64, u64, u64, u64)
def test_encode_is_inverse_of_design_formula(plain: int, never: int, always: int, flag: int) -> None:
    enc = kdbg_codec.encode_qword(plain, never, always, flag)
    assert design_decode(enc, never, always, flag) == plain
    assert kdbg_codec.decode_qword(enc, never, always, flag) == plain


def test_block_round_trip_changes_bytes() -> None:
    plain = bytes(range(256)) * 3 + bytes(0x80)
    enc = kdbg_codec.encode_block(plain, 0x1234_5678_9ABC_DEF1, 0x0FED_CBA9_8765_4321, 0xFFFFF80412345678)
    assert enc != plain and len(enc) == len(plain)
    assert kdbg_codec.decode_block(enc, 0x1234_5678_9ABC_DEF1, 0x0FED_CBA9_8765_4321, 0xFFFFF80412345678) == plain


def _make_guest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_guest.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_make_guest_cli_writes_private_files(tmp_path: Path) -> None:
    out, truth, raw = tmp_path / "g.elf", tmp_path / "g.json", tmp_path / "g.raw"
    proc = _make_guest("--build", "17763", "--cpus", "4", "--ram-mib", "1024", "--seed", "3", "--crashed",
                       "--out", str(out), "--truth", str(truth), "--raw", str(raw))
    assert proc.returncode == 0, proc.stderr
    for path in (out, truth, raw):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(truth.read_text())
    assert data["build"] == 17763 and data["cpus"] == 4 and data["bugcheck"]["code"] == 0x80
    assert len(data["processors"]) == 4 and data["kdbg"]["encoded"] is True
    with out.open("rb") as fh:
        assert fh.read(4) == b"\x7fELF"
    assert raw.stat().st_size == 0x100000000  # up to the end of the BIOS ROM block


def test_make_guest_cli_errors_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "g.elf"
    out.write_bytes(b"keep")
    for args in (["--out", str(out)], ["--cpus", "65", "--out", str(tmp_path / "x.elf")],
                 ["--hv-cpus", "0", "--out", str(tmp_path / "y.elf")],
                 ["--hyperv", "--hv-cpus", "0,2", "--out", str(tmp_path / "w.elf")],
                 ["--hyperv", "--hv-cpus", "zero", "--out", str(tmp_path / "v.elf")],
                 ["--ram-mib", "100", "--out", str(tmp_path / "z.elf")]):
        proc = _make_guest(*args)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("make_guest: error: "), proc.stderr
        assert "Traceback" not in proc.stderr
    assert out.read_bytes() == b"keep"
    assert not list(tmp_path.glob(".*partial*"))
