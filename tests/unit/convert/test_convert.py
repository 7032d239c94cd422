"""`wincrash convert` on generated Windows guests, checked with independent parsers.

kdmp-parser (C++, PyPI) and volatility3's WindowsCrashDump64Layer read our output; the expected
values come from the generator's ground truth, never from our converter.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
from pathlib import Path

import kdmp_parser
import pytest
from helpers import REPO, dump_read_va, first_module_name, run_wincrash, sparse_copy, u64, wait_for_output_started
from wincrash_testkit.synth.guest import GuestSpec, generate
from wincrash_testkit.synth.writers import elf_layout, write_qemu_elf

PAGE = 0x1000
CASES = [  # (build, cpus, ram_mib, crashed, format)
    (7601, 4, 1024, True, "full"),
    (9600, 4, 1024, False, "full"),
    (14393, 4, 1024, True, "bitmap"),
    (17763, 4, 6144, False, "full"),  # RAM above 4 GiB
    (19041, 1, 1024, False, "bitmap"),
    (19041, 4, 1024, True, "full"),
    (19041, 64, 2048, True, "full"),
]


def make_guest(tmp: Path, **spec):
    guest = generate(GuestSpec(**spec))
    elf = tmp / f"g{spec['build']}-{spec['cpus']}.elf"
    with open(elf, "wb") as fh:
        write_qemu_elf(fh, guest)
    return guest, elf


def convert(elf: Path, out: Path, *extra: str) -> dict:
    proc = run_wincrash("convert", elf, "-o", out, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)






@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}cpu-{c[2]}MiB-{c[4]}")
def converted(request, tmp_path_factory):
    build, cpus, ram, crashed, fmt = request.param
    tmp = tmp_path_factory.mktemp(f"conv{build}")
    guest, elf = make_guest(tmp, build=build, cpus=cpus, ram_mib=ram, seed=build + cpus, crashed=crashed)
    out = tmp / "MEMORY.DMP"
    result = convert(elf, out, "--format", fmt)
    return guest, elf, out, result, fmt


def test_header_matches_ground_truth(converted):
    guest, _elf, out, result, fmt = converted
    t = guest.truth
    p = kdmp_parser.KernelDumpParser(out)
    h = p.header
    assert h.DumpType.value == (1 if fmt == "full" else 5)
    assert h.MinorVersion == t["build"] and h.MajorVersion == 0xF
    assert h.MachineImageType == 0x8664
    assert h.NumberProcessors == t["cpus"]
    assert h.KdDebuggerDataBlock == t["kdbg"]["va"]
    assert h.PsLoadedModuleList == t["ps_loaded_module_list"]
    assert h.PsActiveProcessHead == t["ps_active_process_head"]
    # Full and bitmap dumps hold MmPfnDatabase's value (the PFN array), not the variable's address.
    assert h.PfnDatabase == t["mm_pfn_database"]["value"] != t["mm_pfn_database"]["va"]
    system_dtb = t["processes"][0]["dtb"]
    assert h.DirectoryTableBase in (system_dtb, t["dtb"])
    bc = t["bugcheck"]
    if bc["crashed"]:
        assert h.BugCheckCode == bc["code"] and list(h.BugCheckCodeParameter) == bc["params"]
    else:
        assert h.BugCheckCode == 0x161
    assert h.SystemTime == t["kuser_shared_data"]["system_time"]
    assert h.SystemUpTime == t["kuser_shared_data"]["interrupt_time"]
    assert h.ProductType == t["kuser_shared_data"]["product_type"]
    assert h.SuiteMask == t["kuser_shared_data"]["suite_mask"]
    with open(out, "rb") as fh:
        raw = fh.read(0x2000)
    runs_n, _pad, pages = struct.unpack_from("<IIQ", raw, 0x88)
    runs = [list(struct.unpack_from("<QQ", raw, 0x98 + 16 * i)) for i in range(runs_n)]
    assert runs == t["physical_memory_block"]["runs"]  # Windows' view, not the ELF segments
    assert runs != [[b // PAGE, s // PAGE] for b, s, *_ in t["elf_blocks"]]
    assert raw[0xF00:0xF98] == bytes(0x98)  # exception record zeroed, never 'PAGE'
    assert h.RequiredDumpSpace == out.stat().st_size
    if fmt == "bitmap":
        assert_complete_bitmap(out)
    assert (out.stat().st_mode & 0o777) == 0o600


def test_kdbg_decoded_in_place(converted):
    guest, _elf, out, _result, _fmt = converted
    p = kdmp_parser.KernelDumpParser(out)
    block = dump_read_va(p, p.header.KdDebuggerDataBlock, 0x340, p.header.DirectoryTableBase)
    assert block[0x10:0x14] == b"KDBG"
    assert u64(block, 0x18) == guest.truth["kernel"]["base"]
    assert block.hex() == guest.truth["kdbg"]["plain_hex"][:0x340 * 2] if "plain_hex" in guest.truth["kdbg"] else True


def test_first_module_is_ntoskrnl(converted):
    _guest, _elf, out, _result, _fmt = converted
    p = kdmp_parser.KernelDumpParser(out)
    assert first_module_name(p).lower() == "ntoskrnl.exe"


def test_each_cpu_context_matches_its_notes(converted):
    guest, _elf, out, _result, _fmt = converted
    p = kdmp_parser.KernelDumpParser(out)
    dtb = p.header.DirectoryTableBase
    for cpu in guest.truth["processors"]:
        ctx = dump_read_va(p, cpu["context_va"], 0x4D0, dtb)
        regs = cpu["registers"]
        assert u64(ctx, 0xF8) == regs["rip"] and u64(ctx, 0x98) == regs["rsp"]
        assert u64(ctx, 0x78) == regs["rax"] and u64(ctx, 0xF0) == regs["r15"]
        assert struct.unpack_from("<H", ctx, 0x38)[0] == 0x10  # kernel CS
        assert ctx[0x34:0x38] == ctx[0x118:0x11C] == (0x1F80).to_bytes(4, "little")
    cpu0 = guest.truth["processors"][0]["registers"]
    assert p.context.Rip == cpu0["rip"] and p.context.Rsp == cpu0["rsp"]


def test_pages_equal_the_elf_and_volatility3_agrees(converted):
    guest, _elf, out, _result, fmt = converted
    from volatility3.framework import contexts
    from volatility3.framework.layers.crash import WindowsCrashDump64Layer
    from volatility3.framework.layers.physical import FileLayer

    ctx = contexts.Context()
    ctx.config["file.location"] = out.resolve().as_uri()
    ctx.add_layer(FileLayer(ctx, "file", "file"))
    ctx.config["crash.base_layer"] = "file"
    vol = WindowsCrashDump64Layer(ctx, "crash", "crash")
    p = kdmp_parser.KernelDumpParser(out)
    runs = guest.truth["physical_memory_block"]["runs"]
    patched = {(guest.truth["kdbg"]["pa"] + i) // PAGE for i in (0, 0x37F)}
    patched |= {c["context_pa"] // PAGE for c in guest.truth["processors"]}
    pfns = [pfn for pfn in sorted(guest.mem.pages) if any(b <= pfn < b + c for b, c in runs)]
    rng = random.Random(1)
    sample = rng.sample(pfns, min(300, len(pfns)))
    for pfn in sample:
        expected = guest.mem.read(pfn * PAGE, PAGE)
        if pfn in patched:
            continue
        got = p.read_physical_page(pfn * PAGE)
        assert got is not None and bytes(got) == expected, f"page 0x{pfn:x}"
        assert vol.read(pfn * PAGE, PAGE, pad=True) == expected
    zero_pfn = next(b + c - 1 for b, c in runs if (b + c - 1) not in guest.mem.pages)
    # Every page of the runs is present, zero pages too (readers take a missing page as unreadable).
    assert bytes(p.read_physical_page(zero_pfn * PAGE)) == bytes(PAGE)
    assert vol.read(zero_pfn * PAGE, PAGE, pad=False) == bytes(PAGE)
    if fmt == "bitmap":  # ... but zero pages cost no disk blocks: the file is sparse
        data_pages = len(pfns) + len(patched) + 16  # the guest's pages in the runs, patches, header and bitmap
        assert out.stat().st_blocks * 512 <= data_pages * PAGE + (sum(c for _, c in runs) // 8 + PAGE)
        assert out.stat().st_blocks * 512 < out.stat().st_size // 10


def assert_complete_bitmap(out: Path) -> None:
    """'FDMP': TotalPresentPages = the runs' pages, every run page's bit set, bit count a multiple of 64."""
    with open(out, "rb") as fh:
        head = fh.read(0x2038)
        runs_n = struct.unpack_from("<I", head, 0x88)[0]
        runs = [struct.unpack_from("<QQ", head, 0x98 + 16 * i) for i in range(runs_n)]
        signature, first, present, bits = head[0x2000:0x2004], *struct.unpack_from("<QQQ", head, 0x2020)
        bitmap = int.from_bytes(fh.read(bits // 8), "little")
    assert signature == b"FDMP" and bits % 64 == 0 and bits >= max(b + c for b, c in runs)
    assert present == sum(c for _, c in runs) == bitmap.bit_count()
    for base, count in runs:
        assert (bitmap >> base) & ((1 << count) - 1) == (1 << count) - 1
    assert out.stat().st_size == first + present * PAGE


def test_info_on_output_is_sound(converted):
    _guest, _elf, out, _result, _fmt = converted
    proc = run_wincrash("info", out, "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == 0, data["problems"]


# --------------------------------------------------------------------------- refusals

@pytest.fixture(scope="module")
def small_guest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("small")
    return make_guest(tmp, build=19041, cpus=2, ram_mib=512, seed=7, crashed=False)


def test_profile_mismatch_stops_unless_forced(small_guest, tmp_path):
    _guest, elf = small_guest
    proc = run_wincrash("convert", elf, "-o", tmp_path / "x.dmp", "--profile", "Win7SP1x64")
    assert proc.returncode == 2 and "build 19041" in proc.stderr and "Win7SP1x64" in proc.stderr
    assert not (tmp_path / "x.dmp").exists()
    assert run_wincrash("convert", elf, "-o", tmp_path / "x.dmp", "--profile", "Win7SP1x64", "--force").returncode == 0
    assert run_wincrash("convert", elf, "-o", tmp_path / "y.dmp", "--profile", "Win10x64_19041").returncode == 0
    proc = run_wincrash("convert", elf, "-o", tmp_path / "z.dmp", "--profile", "WinXP")
    assert proc.returncode == 2 and "Win10x64" in proc.stderr


def test_existing_output_needs_force(small_guest, tmp_path):
    _guest, elf = small_guest
    out = tmp_path / "MEMORY.DMP"
    out.write_bytes(b"keep me")
    proc = run_wincrash("convert", elf, "-o", out)
    assert proc.returncode == 2 and "--force" in proc.stderr and out.read_bytes() == b"keep me"


def test_corrupted_encoded_kdbg_is_refused(small_guest, tmp_path):
    guest, elf = small_guest
    bad = tmp_path / "bad.elf"
    sparse_copy(elf, bad)
    kdbg_pa = guest.truth["kdbg"]["pa"]
    from wincrash.memory.qemu_elf import read_elf_layout

    with open(bad, "r+b") as fh:
        seg = next(s for s in read_elf_layout(fh, bad.stat().st_size).segments
                   if s.paddr <= kdbg_pa < s.paddr + s.size)
        fh.seek(seg.offset + kdbg_pa - seg.paddr + 0x10)
        fh.write(os.urandom(16))  # OwnerTag/Size and KernBase words
    proc = run_wincrash("convert", bad, "-o", tmp_path / "bad.dmp")
    assert proc.returncode == 2 and "KDBG" in proc.stderr and proc.stderr.count("\n") == 1
    assert not list(tmp_path.glob("*.dmp*")) and not list(tmp_path.glob(".bad.dmp*"))


def test_memory_without_windows(tmp_path):
    raw = tmp_path / "noise.raw"
    raw.write_bytes(random.Random(3).randbytes(4 * 2**20))
    proc = run_wincrash("convert", raw, "-o", tmp_path / "o.dmp")
    assert proc.returncode == 2 and "no Windows kernel found" in proc.stderr and "PML4" in proc.stderr
    assert not (tmp_path / "o.dmp").exists()


def test_truncated_elf_converts_with_warning(small_guest, tmp_path):
    _guest, elf = small_guest
    cut = tmp_path / "cut.elf"
    size = elf.stat().st_size
    sparse_copy(elf, cut, size - 0x20000)  # lose the last segment (the BIOS ROM) half-way
    data = convert(cut, tmp_path / "cut.dmp")
    assert any("truncated" in w and "0xfffe0000-0x100000000" in w for w in data["warnings"]), data["warnings"]


def test_unwritable_output(small_guest, tmp_path):
    _guest, elf = small_guest
    proc = run_wincrash("convert", elf, "-o", tmp_path / "no-such-dir" / "x.dmp")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@pytest.fixture(scope="module")
def slow_elf(tmp_path_factory):
    """An ELF whose conversion takes seconds: 1 GiB of real data (not holes) in a 16 GiB guest (built once)."""
    folder = tmp_path_factory.mktemp("slow")
    guest, elf = make_guest(folder, build=19041, cpus=2, ram_mib=16384, seed=9, crashed=False)
    # Make the copy slow enough to interrupt: 1 GiB of real data, not holes, written 1 MiB at a time (not built
    # in memory) from file offset 8 GiB on, into RAM the guest left empty (never over its kernel or tables).
    _, placed, _ = elf_layout(guest)
    chunk, offset, written = os.urandom(2**20), 8 * 2**30, 0
    with open(elf, "r+b") as fh:
        while written < 1024:
            block = next((b for b in placed if b[2] <= offset and offset + len(chunk) <= b[2] + b[1]), None)
            pa = block[0] + offset - block[2] if block else None
            pfns = range(pa // PAGE, (pa + len(chunk)) // PAGE) if pa is not None else ()
            if pa is not None and not any(pfn in guest.mem.pages for pfn in pfns):
                fh.seek(offset)
                fh.write(chunk)
                written += 1
            offset += len(chunk)
    yield elf
    elf.unlink()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129),
                                           (signal.SIGKILL, -9)])
def test_ctrl_c_mid_write_leaves_nothing(tmp_path, slow_elf, sig, code):
    """Ctrl-C, `kill`/`timeout`/systemd (SIGTERM), a dropped SSH session (SIGHUP) and even SIGKILL leave no file."""
    elf = slow_elf
    out = tmp_path / "out.dmp"
    proc = subprocess.Popen([sys.executable, "-m", "wincrash", "convert", str(elf), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert wait_for_output_started(proc, tmp_path)
    proc.send_signal(sig)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert not out.exists() and not list(tmp_path.glob(".out.dmp*"))
    assert "Traceback" not in stderr
    if sig != signal.SIGKILL:
        assert "wincrash: interrupted" in stderr


def test_32bit_guest_is_refused(small_guest, tmp_path):
    """Notes of vCPUs in protected mode (no long mode): say so instead of failing obscurely."""
    from wincrash.formats.elf import DESC_B_MASK, DESC_L_MASK, QEMUCPUState

    _guest, elf = small_guest
    with open(elf, "rb") as fh:
        data = bytearray(fh.read(1 << 20))  # headers and notes; memory follows
    pos = data.find(b"QEMU\0")
    count = 0
    while pos != -1:
        desc = pos + 8  # name "QEMU\0" padded to 8 bytes, then the QEMUCPUState
        state = QEMUCPUState.parse(bytes(data[desc:desc + 440]))
        if state.version == 1 and state.size == 440:
            state.cs.flags = (state.cs.flags & ~DESC_L_MASK) | DESC_B_MASK
            data[desc:desc + 440] = QEMUCPUState.build(state)
            count += 1
        pos = data.find(b"QEMU\0", pos + 1)
    assert count == 2
    bad = tmp_path / "i386.elf"  # the same layout, but no x64 Windows in memory (all zero), as in a 32-bit guest
    with open(bad, "wb") as dst:
        dst.write(data[:data.find(b"QEMU\0") + 4096])
        dst.truncate(elf.stat().st_size)
    proc = run_wincrash("convert", bad, "-o", tmp_path / "x.dmp")
    assert proc.returncode == 2 and "32-bit guest" in proc.stderr and "not supported yet" in proc.stderr


def test_not_enough_free_space(tmp_path):
    """A destination too small for the dump is refused before anything is written."""
    _guest, elf = make_guest(tmp_path, build=19041, cpus=1, ram_mib=1024, seed=3, filler_mib=8)
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        proc = run_wincrash("convert", elf, "-o", mnt / "MEMORY.DMP")
        assert proc.returncode == 2 and "not enough free space" in proc.stderr
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
