"""Hyper-V root-partition guests (GuestSpec(hyperv=True)), read back with an independent page walker.

The non-Hyper-V output must not change unnoticed: the content hashes below were first recorded before the
Hyper-V variant existed (commit e914e87 + d3f9968) and re-recorded deliberately when the guests became
realistic enough for independent readers (issue 10: System PML4 low in RAM, kernel regions, PFN database and
initial nonpaged pool mapped, POOLCODE, ~20 processes with their own PML4s), so any other drift fails here.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SHARED_SAMPLES
from wincrash_testkit.synth.builds import BUILDS
from wincrash_testkit.synth.guest import GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf

from wincrash.formats import kdbg

REPO = Path(__file__).resolve().parents[3]

CHUNK = 1 << 16
# (spec kwargs, content hash of the QEMU ELF, sha256 of the truth JSON), re-recorded for issue 10's realism.
BASELINE = [
    ({}, "2ec1dd7b95a5ba4d2be013db187fc3a832f170b18fdc3cc67714650f4d7d9200",
     "f97a5ab04f7a58beebb7ffbb8a10928812dedc96789ee9c6278731763f9476f5"),
    ({"build": 17763, "cpus": 4, "ram_mib": 512, "seed": 3, "crashed": True},
     "548073e357b7507ead4715ce6be67f85ca4710119649033df14da57424edcfb7",
     "eb519a29d9914e1f60106e23a763f784d0307965eac21e6bc67bff1e1423f35c"),
    ({"build": 7601, "cpus": 1, "ram_mib": 256, "seed": 9},
     "520f8d61d345c989e26e78b825c4b97c40d65ab72487a71c360f75af1219623c",
     "ca9fbf24983a67e428e0da20118477dca5b5a11e8428609892737ebdfab93160"),
]


def content_hash(path: Path) -> str:
    """sha256 over (file size, every non-zero 64 KiB chunk with its offset): the same whatever the file
    system's hole granularity, and fast on sparse files (holes are skipped with SEEK_DATA)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(size.to_bytes(8, "little"))
    with path.open("rb") as fh:
        fd = fh.fileno()
        pos = 0
        while pos < size:
            try:
                data_start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            hole = os.lseek(fd, data_start, os.SEEK_HOLE)
            cur = data_start - data_start % CHUNK
            while cur < hole:
                chunk = os.pread(fd, CHUNK, cur)
                if chunk.strip(b"\0"):
                    h.update(cur.to_bytes(8, "little"))
                    h.update(chunk)
                cur += CHUNK
            pos = cur
    return h.hexdigest()


@pytest.mark.parametrize(("kwargs", "elf_hash", "truth_hash"), BASELINE)
def test_non_hyperv_output_unchanged(tmp_path, kwargs, elf_hash, truth_hash):
    guest = generate(GuestSpec(**kwargs))
    path = tmp_path / "g.elf"
    with path.open("wb") as fh:
        write_qemu_elf(fh, guest)
    assert content_hash(path) == elf_hash
    assert hashlib.sha256(json.dumps(guest.truth, sort_keys=True).encode()).hexdigest() == truth_hash


# --- Hyper-V guests ------------------------------------------------------------------------------------------
KUSER_SHARED_DATA = 0xFFFFF78000000000
ADDR = 0x000F_FFFF_FFFF_F000
HV_SPECS = [
    {"build": 17763, "cpus": 1, "ram_mib": 512, "seed": 5},
    {"build": 19041, "cpus": 4, "ram_mib": 768, "seed": 6},
    {"build": 19041, "cpus": 4, "ram_mib": 3072, "seed": 7, "hv_cpus": (1, 3), "crashed": True},
    {"build": 17763, "cpus": 4, "ram_mib": 1024, "seed": 8, "hv_cpus": (0,)},
]
SPEC_IDS = ["17763-1cpu", "19041-4cpu", "19041-4cpu-hv13-crashed", "17763-4cpu-hv0"]
# CONTEXT (AMD64) offsets, from winnt.h: written out here rather than taken from wincrash.formats.context.
CTX_GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
            "r15")
# QEMUCPUState v1 (QEMU target/i386/arch_dump.c): version, size, 16 GPRs + rip + rflags, 10 segments, cr[5], kgs.
QEMU_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
             "r15", "rip", "rflags")
QEMU_SEGS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")


def qemu_notes(path: Path) -> list[dict]:
    """Every 'QEMU' note's QEMUCPUState, parsed by hand from the ELF (program header 0 is PT_NOTE)."""
    with path.open("rb") as fh:
        head = fh.read(0x20000)
    phoff = struct.unpack_from("<Q", head, 0x20)[0]
    p_type, _, off, _, _, size = struct.unpack_from("<IIQQQQ", head, phoff)
    assert p_type == 4
    out, pos = [], off
    while pos < off + size:
        namesz, descsz, _ = struct.unpack_from("<III", head, pos)
        name = head[pos + 12:pos + 12 + namesz]
        desc = pos + 12 + namesz + (-namesz % 4)
        if name == b"QEMU\x00":
            vals = struct.unpack_from("<II18Q", head, desc)
            state = {"version": vals[0], "size": vals[1], **dict(zip(QEMU_GPRS, vals[2:], strict=True))}
            for k, seg in enumerate(QEMU_SEGS):
                sel, limit, flags, _, base = struct.unpack_from("<IIIIQ", head, desc + 8 + 144 + 24 * k)
                state[seg] = {"selector": sel, "limit": limit, "flags": flags, "base": base}
            state["cr"] = list(struct.unpack_from("<5Q", head, desc + 8 + 144 + 240))
            state["kernel_gs_base"] = struct.unpack_from("<Q", head, desc + 8 + 144 + 240 + 40)[0]
            out.append(state)
        pos = desc + descsz + (-descsz % 4)
    return out


def leaves(mem, cr3: int) -> tuple[set[int], dict[int, int]]:
    """All page-table pages and all mapped {va: pa} (4 KiB granularity; 2 MiB pages split) of one PML4."""
    tables, mapped = {cr3}, {}

    def walk(table: int, level: int, va: int) -> None:
        entries = struct.unpack("<512Q", mem.phys(table, 0x1000))
        for i, e in enumerate(entries):
            if not e & 1:
                continue
            addr = e & ADDR
            sub = va | (i << (12 + 9 * level))
            if level == 3 and addr == cr3:
                continue  # self-reference: reported separately
            if level in (1, 2) and e & 0x80:
                size = 1 << (12 + 9 * level)
                for k in range(0, size, 0x1000):
                    mapped[sub + k] = (addr & ~(size - 1)) + k
            elif level == 0:
                mapped[sub] = addr
            else:
                tables.add(addr)
                walk(addr, level - 1, sub)

    walk(cr3, 3, 0)
    return tables, {(va | 0xFFFF_0000_0000_0000 if va >> 47 else va): pa for va, pa in mapped.items()}


def self_ref_slots(mem, cr3: int) -> list[int]:
    return [i for i, e in enumerate(struct.unpack("<512Q", mem.phys(cr3, 0x1000))) if e & 1 and e & ADDR == cr3]


def codeview_pdb(mem, base: int) -> str:
    """The PDB name of the image at ``base``: DOS header -> NT headers -> debug directory -> RSDS record."""
    assert mem.virt(base, 2) == b"MZ"
    nt = base + mem.u32(base + 0x3C)
    assert mem.virt(nt, 4) == b"PE\x00\x00"
    assert struct.unpack("<H", mem.virt(nt + 0x18, 2))[0] == 0x20B  # PE32+
    debug_rva, _ = struct.unpack("<II", mem.virt(nt + 0x18 + 112 + 6 * 8, 8))
    _, _, _, _, kind, size, rva, _ = struct.unpack("<IIHHIIII", mem.virt(base + debug_rva, 28))
    record = mem.virt(base + rva, size)
    assert kind == 2 and record[:4] == b"RSDS"
    return record[24:].split(b"\x00")[0].decode()


def nt_runs(mem, truth: dict) -> list[tuple[int, int]]:
    """Windows' RAM runs read from memory: *MmPhysicalMemoryBlock -> PHYSICAL_MEMORY_DESCRIPTOR."""
    desc = mem.u64(truth["physical_memory_block"]["pointer_va"])
    count = mem.u32(desc)
    return [struct.unpack("<QQ", mem.virt(desc + 16 + 16 * i, 16)) for i in range(count)]


def in_runs(pa: int, runs: list[tuple[int, int]]) -> bool:
    return any(base <= pa >> 12 < base + count for base, count in runs)


@pytest.fixture(params=HV_SPECS, ids=SPEC_IDS)
def hv_guest(request, guest_file, open_memory):
    guest, path = guest_file(hyperv=True, **request.param)
    truth = guest.truth
    return guest, path, truth, open_memory(path, truth["hyperv"]["nt_dtb"])


def test_notes_hold_the_hypervisor_state_for_hv_cpus(hv_guest, open_memory) -> None:
    guest, path, truth, nt = hv_guest
    hv = truth["hyperv"]
    hyp = hv["hypervisor"]
    expected_hv = list(guest.spec.hv_cpus) if guest.spec.hv_cpus is not None else list(range(guest.spec.cpus))
    assert hv["hv_cpus"] == sorted(expected_hv)
    notes = qemu_notes(path)
    assert len(notes) == guest.spec.cpus
    hvmem = open_memory(path, hyp["cr3"])
    hv_end = hyp["base"] + hyp["size_of_image"]
    for i, note in enumerate(notes):
        cr3 = note["cr"][3]
        recorded = hv["note_registers"][i]
        assert (note["rip"], note["rsp"], cr3, note["gs"]["base"]) == (
            recorded["registers"]["rip"], recorded["registers"]["rsp"], recorded["cr"][3],
            recorded["segments"]["gs"]["base"])
        if i not in expected_hv:
            assert recorded["context"] == "nt"
            assert cr3 == hv["nt_dtb"]
            assert nt.virt(KUSER_SHARED_DATA, 4) is not None  # NT's space maps KUSER_SHARED_DATA
            assert nt.u64(note["gs"]["base"] + 0x18) == note["gs"]["base"]  # KPCR.Self
            continue
        assert recorded["context"] == "hypervisor"
        assert cr3 == hyp["cr3"] != hv["nt_dtb"]
        mem = open_memory(path, cr3)
        with pytest.raises(LookupError):
            mem.translate(KUSER_SHARED_DATA)
        with pytest.raises(LookupError):
            mem.translate(truth["kernel"]["base"])
        assert self_ref_slots(mem, cr3) == []
        # Ring 0, 64-bit code, paging on: CS 0x10 with L set and DPL 0; CR0.PG, CR4.PAE and CR4.VMXE.
        assert note["cs"]["selector"] == 0x10 and note["cs"]["flags"] & (1 << 21)
        assert (note["cs"]["flags"] >> 13) & 3 == 0
        assert note["cr"][0] & (1 << 31) and note["cr"][4] & 0x20 and note["cr"][4] & 0x2000
        assert hyp["text"][0] <= note["rip"] < hyp["text"][1]
        gs = note["gs"]["base"]
        assert hvmem.u64(gs) == gs  # the per-CPU block lies in (and points into) the hypervisor's space
        idt = note["idt"]["base"]
        for vector in (0, 2, 8, 14, 255):
            lo, hi = struct.unpack("<QQ", mem.virt(idt + 16 * vector, 16))
            handler = (lo & 0xFFFF) | ((lo >> 48) << 16) | ((hi & 0xFFFFFFFF) << 32)
            assert hyp["base"] <= handler < hv_end
            assert (lo >> 16) & 0xFFFF == 0x10
        assert mem.virt(note["rsp"], 8) is not None  # the stack is mapped too
        with pytest.raises(LookupError):
            nt.translate(gs)
    assert codeview_pdb(hvmem, hyp["base"]) == "hvix64.pdb" == hyp["pdb"]


def test_processor_state_holds_the_nt_context(hv_guest) -> None:
    guest, _, truth, nt = hv_guest
    wb = BUILDS[guest.spec.build]
    o = wb.offsets
    kern = truth["kernel"]
    contexts = truth["hyperv"]["nt_contexts"]
    assert len(contexts) == guest.spec.cpus
    for cpu, ctx in zip(truth["processors"], contexts, strict=True):
        ps = cpu["kprcb"] + o["_KPRCB.ProcessorState"]
        frame = nt.virt(ps + o["_KPROCESSOR_STATE.ContextFrame"], 0x4D0)
        flags, mxcsr = struct.unpack_from("<II", frame, 0x30)
        segs = dict(zip(("cs", "ds", "es", "fs", "gs", "ss"), struct.unpack_from("<6H", frame, 0x38), strict=True))
        eflags = struct.unpack_from("<I", frame, 0x44)[0]
        gprs = dict(zip(CTX_GPRS, struct.unpack_from("<16Q", frame, 0x78), strict=True))
        rip = struct.unpack_from("<Q", frame, 0xF8)[0]
        flt_mxcsr = struct.unpack_from("<I", frame, 0x100 + 0x18)[0]
        read = {**gprs, "rip": rip, "rflags": eflags}
        assert read == ctx["registers"] == {k: v for k, v in cpu["registers"].items() if k in read}
        assert segs == ctx["segments"]
        assert (flags, mxcsr, flt_mxcsr) == (0x10000F, 0x1F80, 0x1F80)
        assert segs["cs"] == 0x10 and segs["ss"] == 0x18
        assert kern["base"] <= rip < kern["base"] + kern["size_of_image"]
        assert cpu["stack_top"] - 6 * 0x1000 <= gprs["rsp"] < cpu["stack_top"]
        assert len({v for k, v in gprs.items() if k not in ("rsp", "rbp")}) == 14  # distinct random GPRs
        sr = ps + o["_KPROCESSOR_STATE.SpecialRegisters"]

        def special(name: str, sr: int = sr) -> int:
            return nt.u64(sr + o[f"_KSPECIAL_REGISTERS.{name}"])

        assert special("Cr3") == truth["hyperv"]["nt_dtb"] == truth["dtb"]
        assert special("Cr0") & 0x80000001 == 0x80000001 and special("Cr4") & 0x20
        assert special("MsrGsBase") == cpu["kpcr"]
        assert nt.u64(sr + o["_KSPECIAL_REGISTERS.Idtr"] + 8) == cpu["idt"]
        assert nt.u64(sr + o["_KSPECIAL_REGISTERS.Gdtr"] + 8) == cpu["gdt"]
        assert nt.u32(sr + o["_KSPECIAL_REGISTERS.MxCsr"]) == 0x1F80
    # The KDBG the debugger uses to find that frame says the same offset.
    kd = truth["kdbg"]
    raw = nt.virt(kd["va"], kd["size"])
    words = struct.unpack(f"<{kd['size'] // 8}Q", raw)
    if kd["encoded"]:
        words = [design_decode(w, kd["wait_never"], kd["wait_always"], kd["block_encoded_va"]) for w in words]
    plain = struct.pack(f"<{len(words)}Q", *words)
    blk = kdbg.KDDEBUGGER_DATA64.parse(plain + bytes(kdbg.KDDEBUGGER_DATA64.sizeof() - len(plain)))
    assert blk.Header.OwnerTag == int.from_bytes(b"KDBG", "little")
    assert blk.OffsetPrcbProcStateContext == o["_KPRCB.ProcessorState"] + o["_KPROCESSOR_STATE.ContextFrame"]


def design_decode(q: int, never: int, always: int, flag_va: int) -> int:
    """DESIGN §3: plain = bswap64(rol64(q ^ never, never & 0xFF) ^ flag) ^ always."""
    m64 = (1 << 64) - 1
    r = never & 0xFF & 63
    x = q ^ never
    x = ((x << r) | (x >> (64 - r))) & m64 if r else x
    x ^= flag_va
    return int.from_bytes(x.to_bytes(8, "little"), "big") ^ always


def test_hypervisor_and_securekernel_lie_outside_windows_runs(hv_guest, open_memory) -> None:
    guest, path, truth, nt = hv_guest
    hv = truth["hyperv"]
    runs = nt_runs(nt, truth)
    assert [list(r) for r in runs] == truth["windows_runs"]
    # The same spec without Hyper-V has the same RAM; Hyper-V took exactly its ranges (>= 32 MiB) away.
    plain = generate(GuestSpec(**{k: v for k, v in guest.spec.__dict__.items() if k not in ("hyperv", "hv_cpus")}))
    taken = sum(n for _, n in hv["hypervisor"]["pa_ranges"] + hv["securekernel"]["pa_ranges"])
    assert taken >= 32 << 20
    assert plain.layout.windows_pages * 0x1000 - sum(c for _, c in runs) * 0x1000 == taken
    kernel_pas = set(truth["kernel"]["large_page_pas"])
    for key in ("hypervisor", "securekernel"):
        part = hv[key]
        mem = open_memory(path, part["cr3"])
        tables, mapped = leaves(mem, part["cr3"])
        pages = tables | set(mapped.values())
        assert len(mapped) >= part["size_of_image"] // 0x1000
        for pa in pages:
            assert not in_runs(pa, runs), (key, hex(pa))
            assert any(s <= pa < s + n for s, n in part["pa_ranges"]), (key, hex(pa))
            assert any(s <= pa < s + n for s, n in truth["elf_blocks"]), (key, hex(pa))  # QEMU dumps it
        assert not kernel_pas & {pa & ~0x1FFFFF for pa in mapped.values()}  # ntoskrnl is not mapped there
        assert codeview_pdb(mem, part["base"]) == part["pdb"]
        assert mem.translate(part["base"]) == mapped[part["base"]]
        with pytest.raises(LookupError):
            mem.translate(truth["kernel"]["base"])
    sk = hv["securekernel"]
    assert sk["pdb"] == "securekernel.pdb"
    skmem = open_memory(path, sk["cr3"])
    assert self_ref_slots(skmem, sk["cr3"]) == [sk["self_ref_slot"]]  # Windows-looking: a decoy
    assert skmem.translate(KUSER_SHARED_DATA) & ~0xFFF == sk["kuser_like_pa"]
    assert sk["cr3"] not in (hv["hypervisor"]["cr3"], hv["nt_dtb"])
    # And NT's own structures never landed in the reserved ranges.
    for cpu in truth["processors"]:
        assert in_runs(cpu["kprcb_pa"], runs) and in_runs(cpu["context_pa"], runs)
    for pa in truth["kernel"]["large_page_pas"]:
        assert in_runs(pa, runs)


def test_hyperv_guest_is_seeded(tmp_path) -> None:
    a = generate(GuestSpec(hyperv=True, cpus=2, ram_mib=512, seed=21, hv_cpus=(1,)))
    b = generate(GuestSpec(hyperv=True, cpus=2, ram_mib=512, seed=21, hv_cpus=(1,)))
    c = generate(GuestSpec(hyperv=True, cpus=2, ram_mib=512, seed=22, hv_cpus=(1,)))
    paths = []
    for name, guest in (("a", a), ("b", b), ("c", c)):
        paths.append(tmp_path / f"{name}.elf")
        with paths[-1].open("wb") as fh:
            write_qemu_elf(fh, guest)
    hashes = [content_hash(p) for p in paths]
    assert hashes[0] == hashes[1] != hashes[2]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"hv_cpus": (0,)}, "hv_cpus needs a hyperv guest"),
    ({"hyperv": True, "cpus": 2, "hv_cpus": (2,)}, "hv_cpus must be distinct CPU numbers from 0 to 1"),
    ({"hyperv": True, "cpus": 2, "hv_cpus": (1, 1)}, "distinct"),
])
def test_bad_hv_cpus_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        GuestSpec(**kwargs).validate()


def test_make_guest_hyperv_cli(tmp_path) -> None:
    out, truth_path = tmp_path / "hv.elf", tmp_path / "hv.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_guest.py"), "--hyperv", "--cpus", "3",
                           "--hv-cpus", "0,2", "--ram-mib", "512", "--build", "17763", "--out", str(out),
                           "--truth", str(truth_path)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Hyper-V (hypervisor context: CPUs [0, 2])" in proc.stderr
    truth = json.loads(truth_path.read_text())
    assert truth["hyperv"]["hv_cpus"] == [0, 2] and truth["spec"]["hyperv"] is True
    notes = qemu_notes(out)
    assert [n["cr"][3] == truth["hyperv"]["hypervisor"]["cr3"] for n in notes] == [True, False, True]
    assert notes[1]["cr"][3] == truth["hyperv"]["nt_dtb"]
    assert oct(out.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("build", [17763, 19041])
def test_processor_state_offsets_match_isf(build) -> None:
    """ProcessorState/ContextFrame/SpecialRegisters offsets the generator uses agree with the real PDB tables."""
    wb = BUILDS[build]
    path = SHARED_SAMPLES / "isf" / f"{wb.pdb_guid}-1.json.xz"
    if not path.is_file():
        pytest.skip(f"ISF table {path.name} not available")
    with lzma.open(path, "rt") as fh:
        types = json.load(fh)["user_types"]
    o = wb.offsets
    assert types["_KPRCB"]["fields"]["ProcessorState"]["offset"] == o["_KPRCB.ProcessorState"]
    for field in ("ContextFrame", "SpecialRegisters"):
        assert types["_KPROCESSOR_STATE"]["fields"][field]["offset"] == o[f"_KPROCESSOR_STATE.{field}"]
    for field in ("Cr0", "Cr3", "Cr4", "Gdtr", "Idtr", "MxCsr", "MsrGsBase"):
        assert types["_KSPECIAL_REGISTERS"]["fields"][field]["offset"] == o[f"_KSPECIAL_REGISTERS.{field}"]
    ctx = types["_CONTEXT"]["fields"]
    assert (ctx["ContextFlags"]["offset"], ctx["MxCsr"]["offset"], ctx["SegCs"]["offset"], ctx["Rax"]["offset"],
            ctx["Rip"]["offset"], ctx["FltSave"]["offset"]) == (0x30, 0x34, 0x38, 0x78, 0xF8, 0x100)
