"""Issue 13's robustness cases (../shared/samples/cases/robustness/, skipped when absent) and generated
equivalents: bad input ends in seconds with one `wincrash: error:` line, or in a consistent dump with a warning."""

from __future__ import annotations

import json
import lzma
import os
import struct
import time
from pathlib import Path

import pytest
from helpers import run_wincrash, sample_file

from wincrash.dmp.reader import read_dmp
from wincrash.dmp.verify import verify_written
from wincrash.errors import WincrashError
from wincrash.memory.qemu_elf import MAX_VCPU_NOTES, read_elf_layout

CASES = "cases/robustness"


def _unxz(relative: str, dst: Path) -> Path:
    """Decompress a case's .xz next to the test (sparse where the data is zero)."""
    with lzma.open(sample_file(relative)) as src, open(dst, "wb") as out:
        while chunk := src.read(1 << 20):
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
        out.truncate()
    return dst


def _one_line_error(proc, seconds: float, limit: float = 10) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("wincrash:")]
    assert len(lines) == 1 and lines[0].startswith("wincrash: error: "), proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert seconds < limit, f"took {seconds:.1f} s"
    return lines[0]


def _timed(*args):
    t0 = time.monotonic()
    proc = run_wincrash(*args, timeout=60)
    return proc, time.monotonic() - t0


def test_selfmap_case_ends_in_seconds(tmp_path):
    proc, secs = _timed("convert", sample_file(f"{CASES}/raw-selfmap-4KiB-hang/selfmap.raw"), "-o", tmp_path / "x.dmp")
    assert "self-referencing entries" in _one_line_error(proc, secs)


@pytest.mark.parametrize("layout", ["every-page-selfmap", "one-selfmap-all-fold"])
def test_self_mapping_tables_end_in_seconds(tmp_path, layout):
    """64 pages that each map themselves at every level; a PML4 with one self-map whose kernel half folds
    onto one page (16 M virtual pages of one frame): both rejected without walking what they claim."""
    if layout == "every-page-selfmap":
        data = b"".join(struct.pack("<512Q", *[(p << 12) | 3] * 512) for p in range(64))
    else:
        pml4 = [0] * 512
        pml4[0x1ED], pml4[0x1F0], pml4[0x1EF] = 0x3, 0x1003, 0x1003
        data = struct.pack("<512Q", *pml4) + struct.pack("<512Q", *[0x1003] * 512)
    path = tmp_path / "tables.raw"
    path.write_bytes(data)
    proc, secs = _timed("convert", path, "-o", tmp_path / "x.dmp")
    line = _one_line_error(proc, secs)
    assert "no Windows kernel found" in line
    assert ("more than the input holds" in line) == (layout == "one-selfmap-all-fold")


def test_many_vcpu_notes_are_linear(tmp_path):
    src = _unxz(f"{CASES}/elf-many-notes-4096/input.xz", tmp_path / "in.elf")
    proc, secs = _timed("convert", src, "-o", tmp_path / "x.dmp", "--format", "bitmap", "--json")
    assert proc.returncode == 0, proc.stderr
    assert secs < 10, f"4096 vCPU notes took {secs:.1f} s (was 15-29 s)"
    assert json.loads(proc.stdout)["seconds_finding_windows"] < 5


def _elf(phoff: int = 64, notes: int = 0) -> bytes:
    """A minimal ET_CORE x86_64 ELF: one PT_NOTE with ``notes`` QEMU notes and one 4 KiB PT_LOAD."""
    note = struct.pack("<III", 5, 440, 0) + b"QEMU\0\0\0\0" + struct.pack("<II", 1, 440) + bytes(432)
    notes_at = 64 + 2 * 56
    load_at = notes_at + len(note) * notes
    ehdr = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, 56, 2,
                                                          0, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, notes_at, 0, 0, len(note) * notes, 0, 0) + \
        struct.pack("<IIQQQQQQ", 1, 0, load_at, 0, 0, 0x1000, 0x1000, 0)
    return ehdr + phdrs + note * notes + bytes(0x1000)


def test_too_many_vcpu_notes_is_one_line(tmp_path):
    path = tmp_path / "n.elf"
    path.write_bytes(_elf(notes=MAX_VCPU_NOTES + 1))
    with open(path, "rb") as fh, pytest.raises(WincrashError, match=f"more than {MAX_VCPU_NOTES} vCPU notes"):
        read_elf_layout(fh, path.stat().st_size)
    path.write_bytes(_elf(notes=MAX_VCPU_NOTES))
    with open(path, "rb") as fh:
        assert len(read_elf_layout(fh, path.stat().st_size).cpus) == MAX_VCPU_NOTES


@pytest.mark.parametrize("phoff", [(1 << 64) - 1, 1 << 63, 0x10000])
def test_huge_e_phoff_is_one_line(tmp_path, phoff):
    path = tmp_path / "p.elf"
    path.write_bytes(_elf(phoff=phoff))
    proc, secs = _timed("convert", path, "-o", tmp_path / "x.dmp")
    assert f"0x{phoff:x}" in _one_line_error(proc, secs)


@pytest.mark.parametrize("fmt", ["bitmap", "full"])
def test_overlapping_mmpmb_runs_fall_back_and_stay_consistent(tmp_path, fmt):
    src = _unxz(f"{CASES}/elf-mmpmb-overlapping-runs-corrupt-bitmap/mm-overlap.elf.xz", tmp_path / "in.elf")
    out = tmp_path / "x.dmp"
    proc = run_wincrash("convert", src, "-o", out, "--format", fmt, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert any("MmPhysicalMemoryBlock" in w and "implausible" in w and "overlaps" in w for w in result["warnings"])
    info = run_wincrash("info", out, "--json")
    assert info.returncode == 0, info.stdout[-2000:]
    with open(out, "rb") as fh:
        verify_written(fh, fmt, read_dmp(fh).runs.runs)


@pytest.mark.parametrize("relative", [
    "dmp-bitmap-alternating-hang/alt1.dmp.xz", "dmp-bitmap-alternating-hang/alt4.dmp.xz",
    "dmp-bitmap-pages-huge/hugepages.dmp", "dmp-truncated-header-internal-error/short8.dmp",
    "dmp-truncated-header-internal-error/short100.dmp", "dmp-truncated-header-internal-error/short4096.dmp",
    "dmp-truncated-header-internal-error/short8191.dmp",
    "savevm-convert-01-byteflip-internal-error/input.xz"])
def test_damaged_inputs_are_one_line(tmp_path, relative):
    path = f"{CASES}/{relative}"
    src = _unxz(path, tmp_path / Path(relative).stem) if relative.endswith(".xz") else sample_file(path)
    proc, secs = _timed("convert", src, "-o", tmp_path / "x.dmp")
    line = _one_line_error(proc, secs)
    if "short" in relative:
        assert "truncated crash dump" in line and "needs 8192" in line
    if "hugepages" in relative:
        assert "runs past the end of the file" in line
    assert not (tmp_path / "x.dmp").exists()


def test_fifo_is_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (("info", fifo), ("convert", fifo, "-o", tmp_path / "x.dmp")):
        proc, secs = _timed(*args)
        assert "FIFO" in _one_line_error(proc, secs, 5)
