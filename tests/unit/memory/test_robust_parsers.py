"""Parsers and checks that bound their work by the input (issue 13): kdump bitmaps, run lists, written dumps."""

from __future__ import annotations

import random
import time

import pytest
from wincrash_testkit.synth.guest import GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf

from wincrash.convert.pipeline import convert_file
from wincrash.dmp.plan import merge_runs
from wincrash.dmp.reader import read_dmp
from wincrash.dmp.verify import verify_written
from wincrash.errors import WincrashError
from wincrash.memory.kdump import _bit_runs


def _slow_runs(bitmap: bytes, limit: int) -> list[tuple[int, int]]:
    bits = [(bitmap[i // 8] >> (i % 8)) & 1 for i in range(min(limit, len(bitmap) * 8))]
    runs, i = [], 0
    while i < len(bits):
        if bits[i]:
            j = i
            while j < len(bits) and bits[j]:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def test_kdump_bit_runs_agree_with_a_bit_by_bit_reading():
    rng = random.Random(5)
    for _ in range(300):
        bitmap = bytes(rng.choice([0, 0xFF, rng.randrange(256)]) for _ in range(rng.randrange(48)))
        limit = rng.choice([rng.randrange(400), 1 << 64])
        assert list(_bit_runs(bitmap, limit)) == _slow_runs(bitmap, limit)


def test_kdump_bit_runs_linear_and_bounded_by_the_bitmap():
    """An alternating 1 MiB bitmap (4 Mi runs) with max_mapnr 2^64: was quadratic and a 2^64-bit mask."""
    t0 = time.monotonic()
    assert sum(1 for _ in _bit_runs(b"\x55" * (1 << 20), 1 << 64)) == 4 << 20
    assert time.monotonic() - t0 < 20


def _merge_by_repeated_closing(runs, limit):
    """The former quadratic merge_runs: close the smallest gap (lowest index first) until ``limit`` remain."""
    merged = sorted(runs)
    while len(merged) > limit:
        _, i = min((merged[i + 1][0] - (merged[i][0] + merged[i][1]), i) for i in range(len(merged) - 1))
        merged[i:i + 2] = [(merged[i][0], merged[i + 1][0] + merged[i + 1][1] - merged[i][0])]
    return merged


def test_merge_runs_matches_the_quadratic_merge_and_is_fast():
    rng = random.Random(9)
    for _ in range(50):
        base, runs = 0, []
        for _ in range(rng.randrange(1, 300)):
            base += rng.randrange(0, 5)
            runs.append((base, rng.randrange(1, 4)))
            base += runs[-1][1]
        limit = rng.randrange(1, 60)
        assert merge_runs(runs, limit) == _merge_by_repeated_closing(runs, limit)
    t0 = time.monotonic()
    merged = merge_runs([(2 * i, 1) for i in range(200_000)], 42)  # a savevm page map's worth of runs
    assert time.monotonic() - t0 < 5 and len(merged) == 42 and merged[-1] == (399_998, 1)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    work = tmp_path_factory.mktemp("verify")
    with open(work / "g.elf", "wb") as fh:
        write_qemu_elf(fh, generate(GuestSpec(build=19041, cpus=2, ram_mib=256, seed=3, crashed=True)))
    for fmt in ("full", "bitmap", "kernel"):
        convert_file(work / "g.elf", work / f"{fmt}.dmp", fmt=fmt, progress=False)
    return work


@pytest.mark.parametrize("fmt", ["full", "bitmap", "kernel"])
def test_verify_accepts_what_the_writers_write_and_catches_tampering(written, fmt, tmp_path):
    path = written / f"{fmt}.dmp"
    with open(path, "rb") as fh:
        dmp = read_dmp(fh)
        present = dmp.bitmap.present_pages if dmp.bitmap else None
        verify_written(fh, fmt, dmp.runs.runs, present if fmt == "kernel" else None)
        runs = dmp.runs.runs
    with pytest.raises(WincrashError, match="run list differs"):
        with open(path, "rb") as fh:
            verify_written(fh, fmt, ((runs[0][0], runs[0][1] + 1), *runs[1:]))
    tampered = tmp_path / "t.dmp"
    data = bytearray(path.read_bytes()[:0x3000])
    if fmt == "full":
        tampered.write_bytes(bytes(data))  # cut short
        match = "bytes, the runs need"
    else:
        data[0x2038 + 2] ^= 0x10  # one bitmap bit changed
        tampered.write_bytes(bytes(data) + path.read_bytes()[0x3000:])
        match = "bits set"
    with open(tampered, "rb") as fh, pytest.raises(WincrashError, match=match):
        verify_written(fh, fmt, runs, present if fmt == "kernel" else None)


class _Space:
    """A kernel address space of a few qwords (read_u64/read as AddressSpace offers them)."""

    def __init__(self, qwords: dict[int, int]) -> None:
        self.qwords = qwords

    def read_u64(self, va: int) -> int | None:
        return self.qwords.get(va, 0)

    def read(self, va: int, size: int) -> bytes | None:
        return self.read_u64(va).to_bytes(8, "little")[:size]


def test_ki_processor_block_pointing_at_itself_is_named():
    from types import SimpleNamespace

    from wincrash.windows.vcpus import read_kprcbs

    kpb = 0xFFFFF800_02400000
    blocks, stop = read_kprcbs(_Space({kpb: kpb}), SimpleNamespace(ki_processor_block=kpb))
    assert blocks == [] and "points into KiProcessorBlock itself" in stop


def test_aliasing_elf_segments_without_paging_warn(tmp_path):
    import struct as st

    from wincrash.memory.qemu_elf import QemuElf

    ehdr = b"\x7fELF\x02\x01\x01" + bytes(9) + st.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    data_at = 64 + 2 * 56
    phdrs = st.pack("<IIQQQQQQ", 1, 0, data_at, 0, 0, 0x2000, 0x2000, 0) + \
        st.pack("<IIQQQQQQ", 1, 0, data_at + 0x2000, 0, 0x1000, 0x2000, 0x2000, 0)  # overlaps page 1, p_vaddr 0
    path = tmp_path / "alias.elf"
    path.write_bytes(ehdr + phdrs + bytes(0x4000))
    with open(path, "rb") as fh:
        mapped = QemuElf.map(path, fh, path.stat().st_size)
    assert mapped.kind == "qemu-elf" and any("overlap" in n and "damaged" in n for n in mapped.notes)
    assert all(a.paddr + a.size <= b.paddr for a, b in zip(mapped.segments, mapped.segments[1:], strict=False))
