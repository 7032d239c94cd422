"""The synthetic guest generator: QEMU ELF layout, Windows structures read back independently, speed, sparseness."""

from __future__ import annotations

import hashlib
import os
import struct
import time
from pathlib import Path

import pytest
from wincrash_testkit.synth.builds import BUILDS, KUSER_SHARED_DATA_VA
from wincrash_testkit.synth.guest import GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf, write_raw

from wincrash.formats import elf, kdbg

BUILD_LIST = sorted(BUILDS)
M64 = (1 << 64) - 1


def design_decode(q: int, never: int, always: int, flag_va: int) -> int:
    """DESIGN §3, written out again here: plain = bswap64(rol64(q ^ never, never & 0xFF) ^ flag) ^ always."""
    r = never & 0xFF & 63
    x = q ^ never
    x = ((x << r) | (x >> (64 - r))) & M64 if r else x
    x ^= flag_va
    return int.from_bytes(x.to_bytes(8, "little"), "big") ^ always


def parse_elf(path: Path):
    with path.open("rb") as fh:
        data = fh.read(0x10000)
    ehdr = elf.Elf64_Ehdr.parse(data)
    phdrs = [elf.Elf64_Phdr.parse(data[ehdr.e_phoff + i * 56:]) for i in range(ehdr.e_phnum)]
    note = phdrs[0]
    notes, pos = [], note.p_offset
    while pos < note.p_offset + note.p_filesz:
        nh = elf.Elf64_Nhdr.parse(data[pos:])
        name = data[pos + 12:pos + 12 + nh.n_namesz]
        dpos = pos + 12 + nh.n_namesz + elf.note_pad(nh.n_namesz)
        notes.append((name, nh.n_type, data[dpos:dpos + nh.n_descsz]))
        pos = dpos + nh.n_descsz + elf.note_pad(nh.n_descsz)
    return ehdr, phdrs, notes


def sparse_digest(path: Path) -> str:
    """sha256 over the data extents of a sparse file (offset + bytes), skipping holes."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        end, pos = os.fstat(fd).st_size, 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            h.update(start.to_bytes(8, "little"))
            h.update(os.pread(fd, stop - start, start))
            pos = stop
        h.update(end.to_bytes(8, "little"))
    finally:
        os.close(fd)
    return h.hexdigest()


def test_deterministic_per_seed(tmp_path) -> None:
    digests = []
    for seed in (11, 11, 12):
        guest = generate(GuestSpec(build=19041, cpus=2, ram_mib=512, seed=seed))
        path = tmp_path / f"{seed}-{len(digests)}.elf"
        with path.open("wb") as fh:
            write_qemu_elf(fh, guest)
        digests.append(sparse_digest(path))
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


@pytest.mark.parametrize("cpus", [1, 4])
def test_elf_layout_is_qemus(guest_file, cpus: int) -> None:
    guest, path = guest_file(build=19041, cpus=cpus, ram_mib=6144, seed=3)
    ehdr, phdrs, notes = parse_elf(path)
    assert (ehdr.e_ident.ei_class, ehdr.e_type, ehdr.e_machine, ehdr.e_ehsize) == (2, elf.ET_CORE, 62, 8)
    assert phdrs[0].p_type == elf.PT_NOTE and all(p.p_type == elf.PT_LOAD for p in phdrs[1:])
    loads = [(p.p_paddr, p.p_filesz) for p in phdrs[1:]]
    assert loads == [tuple(b) for b in guest.truth["elf_blocks"]]
    assert (0xFFFC0000, 0x40000) in loads and any(addr == 0x100000000 for addr, _ in loads)
    assert all(p.p_filesz == p.p_memsz and p.p_vaddr == 0 for p in phdrs[1:])
    assert path.stat().st_size == phdrs[-1].p_offset + phdrs[-1].p_filesz
    assert [n[0] for n in notes] == [b"CORE\x00"] * cpus + [b"QEMU\x00"] * cpus
    assert [n[1] for n in notes] == [elf.NT_PRSTATUS] * cpus + [0] * cpus
    rips = set()
    for i in range(cpus):
        pr = elf.X86_64_ElfPrstatus.parse(notes[i][2])
        st = elf.QEMUCPUState.parse(notes[cpus + i][2])
        want = guest.truth["processors"][i]
        assert pr.pid == i + 1
        assert (st.version, st.size) == (1, 440)
        assert st.rip == pr.regs.rip == want["registers"]["rip"]
        assert st.rsp == pr.regs.rsp == want["registers"]["rsp"]
        assert st.gs.base == pr.regs.gs_base == want["kpcr"]
        assert st.cs.selector == 0x10 and st.cs.flags & elf.DESC_L_MASK and st.cs.flags & elf.DESC_P_MASK
        assert (st.ss.selector, st.ds.selector, st.fs.selector, st.gs.selector) == (0x18, 0x2B, 0x53, 0x2B)
        assert st.cr[0] == 0x80050033 and st.cr[3] == guest.truth["dtb"] and st.cr[4] & 0x20
        assert st.idt.base == want["idt"] and st.gdt.base == want["gdt"]
        assert st.kernel_gs_base < 0x800000000000
        k = guest.truth["kernel"]
        text = next(s for s in k["sections"] if s["name"] == ".text")
        assert k["base"] + text["rva"] <= st.rip < k["base"] + text["rva"] + text["size"]
        rips.add((st.rax, st.rbx, st.r15))
    assert len(rips) == cpus  # registers differ per CPU


@pytest.mark.parametrize("build", BUILD_LIST)
def test_windows_structures_read_back_through_vol3_and_page_walk(guest_file, open_memory, build: int) -> None:
    guest, path = guest_file(build=build, cpus=3, ram_mib=5120, seed=build, crashed=True)
    t = guest.truth
    mem = open_memory(path, t["dtb"])
    wb = BUILDS[build]
    # Self-reference slot: PML4[slot] points back at the PML4.
    entry = struct.unpack("<Q", mem.phys(t["dtb"] + t["self_ref_slot"] * 8, 8))[0]
    assert entry & 0x000F_FFFF_FFFF_F000 == t["dtb"] and entry & 1
    assert t["self_ref_slot"] == 0x1ED if build < 14393 else 0x100 <= t["self_ref_slot"] < 0x200
    # KUSER_SHARED_DATA
    k = KUSER_SHARED_DATA_VA
    assert mem.translate(k) == t["kuser_shared_data"]["pa"]
    low, high1, _ = struct.unpack("<IiI", mem.virt(k + 0x14, 12))
    assert (high1 << 32) | low == t["kuser_shared_data"]["system_time"]
    assert mem.u32(k + 0x26C) == wb.nt_major and mem.u32(k + 0x270) == wb.nt_minor
    assert mem.u32(k + 0x264) == t["kuser_shared_data"]["product_type"]
    assert mem.u32(k + 0x2D0) == t["kuser_shared_data"]["suite_mask"]
    if build >= 14393:
        assert mem.u32(k + 0x260) == build
    # KDBG: decode with the DESIGN formula and the ground-truth keys.
    kd = t["kdbg"]
    raw = mem.virt(kd["va"], kd["size"])
    assert mem.translate(kd["va"]) == kd["pa"]
    words = struct.unpack(f"<{kd['size'] // 8}Q", raw)
    if kd["encoded"]:
        assert raw[0x10:0x14] != b"KDBG"
        words = [design_decode(w, kd["wait_never"], kd["wait_always"], kd["block_encoded_va"]) for w in words]
        assert mem.u64(kd["block_encoded_va"]) & 0xFF == 1
        assert mem.u64(t["symbols"]["KiWaitNever"]) == kd["wait_never"]
        assert mem.u64(t["symbols"]["KiWaitAlways"]) == kd["wait_always"]
    else:
        assert build == 7601
    plain = struct.pack(f"<{len(words)}Q", *words)
    assert plain.hex() == kd["plain_hex"]
    blk = kdbg.KDDEBUGGER_DATA64.parse(plain + bytes(0x380 - len(plain)))
    assert blk.Header.OwnerTag == int.from_bytes(b"KDBG", "little") and blk.Header.Size == wb.kdbg_size
    assert blk.KernBase == t["kernel"]["base"]
    assert blk.Header.List.Flink == blk.Header.List.Blink == kd["list_head"]
    assert mem.u64(kd["list_head"]) == kd["va"]
    assert blk.PsLoadedModuleList == t["ps_loaded_module_list"]
    assert blk.PsActiveProcessHead == t["ps_active_process_head"]
    assert blk.KiProcessorBlock == t["ki_processor_block"]
    assert blk.MmPfnDatabase == t["mm_pfn_database"]["va"]
    assert mem.u64(blk.MmPfnDatabase) == t["mm_pfn_database"]["value"]
    assert blk.OffsetPrcbContext == wb.off("_KPRCB.Context") and blk.SizePrcb == wb.sizes["_KPRCB"]
    assert mem.virt(blk.NtBuildLab, 80).split(b"\x00")[0].decode() == wb.nt_build_lab
    if build >= 14393:
        assert blk.PteBase == t["pte_base"] == 0xFFFF000000000000 | (t["self_ref_slot"] << 39)
    assert mem.u64(blk.MmHighestPhysicalPage) == guest.layout.highest_page
    # Bugcheck data
    code, *params = struct.unpack("<5Q", mem.virt(blk.KiBugcheckData, 40))
    assert (code, params) == (0x80, t["bugcheck"]["params"]) and t["bugcheck"]["code"] == 0x80
    # MmPhysicalMemoryBlock: pointer variable -> descriptor; differs from the ELF blocks.
    desc = mem.u64(blk.MmPhysicalMemoryBlock)
    nruns, _, npages = struct.unpack("<IIQ", mem.virt(desc, 16))
    runs = [list(struct.unpack("<QQ", mem.virt(desc + 16 + 16 * i, 16))) for i in range(nruns)]
    assert runs == t["windows_runs"] and 3 <= nruns <= 8 and npages == sum(c for _, c in runs)
    assert [[a // 0x1000, s // 0x1000] for a, s in t["elf_blocks"]] != runs
    # KdVersionBlock
    ver = kdbg.DBGKD_GET_VERSION64.parse(mem.virt(t["kd_version_block"]["va"], 0x28))
    assert (ver.MajorVersion, ver.MinorVersion, ver.MachineType) == (0xF, build, 0x8664)
    assert (ver.KernBase, ver.DebuggerDataList) == (blk.KernBase, kd["list_head"])
    # Processors: KiProcessorBlock[i] -> KPRCB; KPCR self pointers; CONTEXT buffer zero-filled.
    for i, cpu in enumerate(t["processors"]):
        prcb = mem.u64(blk.KiProcessorBlock + 8 * i)
        assert prcb == cpu["kprcb"] == cpu["kpcr"] + 0x180 and mem.translate(prcb) == cpu["kprcb_pa"]
        assert mem.u64(cpu["kpcr"] + wb.off("_KPCR.Self")) == cpu["kpcr"]
        assert mem.u64(cpu["kpcr"] + wb.off("_KPCR.CurrentPrcb")) == prcb
        assert mem.u64(cpu["kpcr"] + wb.off("_KPCR.IdtBase")) == cpu["idt"]
        assert mem.u32(prcb + blk.OffsetPrcbNumber) == i
        ctx = mem.u64(prcb + blk.OffsetPrcbContext)
        assert ctx == cpu["context_va"] and mem.virt(ctx, 0x4D0) == bytes(0x4D0)
        sr = prcb + wb.off("_KPRCB.ProcessorState")
        assert mem.u64(sr + wb.off("_KSPECIAL_REGISTERS.Cr3")) == t["dtb"]
        # IDT vector 0 points into the kernel
        lo, _sel, _attr, mid, hi = struct.unpack("<HHHHI", mem.virt(cpu["idt"], 12))
        handler = lo | (mid << 16) | (hi << 32)
        assert t["kernel"]["base"] < (handler | 0xFFFF000000000000) < t["kernel"]["base"] + t["kernel"]["size_of_image"]
    # Loaded modules: ntoskrnl.exe first, then hal.dll ...
    o = wb.offsets
    names, link = [], mem.u64(blk.PsLoadedModuleList)
    while link != blk.PsLoadedModuleList and len(names) < 50:
        names.append((mem.unicode_string(link + o["_KLDR_DATA_TABLE_ENTRY.BaseDllName"]),
                      mem.u64(link + o["_KLDR_DATA_TABLE_ENTRY.DllBase"]),
                      mem.unicode_string(link + o["_KLDR_DATA_TABLE_ENTRY.FullDllName"])))
        link = mem.u64(link)
    assert names[0] == ("ntoskrnl.exe", blk.KernBase, r"\SystemRoot\system32\ntoskrnl.exe")
    assert names[1][0] == "hal.dll" and len(names) == len(t["modules"]) >= 9
    # both page sizes were used by the walks above
    assert {0x1000, 0x200000} <= mem.page_sizes


@pytest.mark.parametrize("build", [7601, 19041])
def test_ntoskrnl_pe_headers(guest_file, open_memory, build: int) -> None:
    guest, path = guest_file(build=build, cpus=1, ram_mib=1024, seed=5)
    t = guest.truth
    mem = open_memory(path, t["dtb"])
    base = t["kernel"]["base"]
    assert base % 0x200000 == 0 and 0xFFFFF80000000000 <= base < 0xFFFFF81000000000
    head = mem.virt(base, 0x1000)
    assert head[:2] == b"MZ"
    nt = struct.unpack_from("<I", head, 0x3C)[0]
    assert head[nt:nt + 4] == b"PE\x00\x00"
    machine, nsec = struct.unpack_from("<HH", head, nt + 4)
    opt = nt + 24
    assert machine == 0x8664 and struct.unpack_from("<H", head, opt)[0] == 0x20B
    size_of_image = struct.unpack_from("<I", head, opt + 56)[0]
    assert size_of_image == t["kernel"]["size_of_image"]
    dirs = opt + 112
    exp_rva, _ = struct.unpack_from("<II", head, dirs)
    dbg_rva, _ = struct.unpack_from("<II", head, dirs + 6 * 8)
    sec_names = [head[opt + 0xF0 + 40 * i:opt + 0xF0 + 40 * i + 8].rstrip(b"\x00").decode() for i in range(nsec)]
    assert {".text", "PAGE", ".rdata", ".data", "INIT"} <= set(sec_names)
    # CodeView record
    _, _, _, _, dtype, dsize, draw, _ = struct.unpack("<IIHHIIII", mem.virt(base + dbg_rva, 28))
    rec = mem.virt(base + draw, dsize)
    assert dtype == 2 and rec[:4] == b"RSDS" and rec[24:].rstrip(b"\x00") == b"ntkrnlmp.pdb"
    d1, d2, d3 = struct.unpack_from("<IHH", rec, 4)
    guid = f"{d1:08X}{d2:04X}{d3:04X}{rec[12:20].hex().upper()}"
    assert guid == BUILDS[build].pdb_guid and struct.unpack_from("<I", rec, 20)[0] == 1
    # Export directory: NtBuildNumber, PsLoadedModuleList, KeNumberProcessors
    (_, _, _, _, _, _, nfun, nnames, funcs, names, ords) = struct.unpack("<IIHHIIIIIII", mem.virt(base + exp_rva, 40))
    exports = {}
    for i in range(nnames):
        name_rva = struct.unpack("<I", mem.virt(base + names + 4 * i, 4))[0]
        name = mem.virt(base + name_rva, 64).split(b"\x00")[0].decode()
        ordinal = struct.unpack("<H", mem.virt(base + ords + 2 * i, 2))[0]
        exports[name] = base + struct.unpack("<I", mem.virt(base + funcs + 4 * ordinal, 4))[0]
    assert list(exports) == sorted(exports) and nfun == nnames
    assert mem.u32(exports["NtBuildNumber"]) == 0xF0000000 | build
    assert exports["PsLoadedModuleList"] == t["ps_loaded_module_list"]
    assert mem.u32(exports["KeNumberProcessors"]) == 1


def test_structures_live_in_windows_ram_spread_above_4g(guest_file) -> None:
    guest, _ = guest_file(build=17763, cpus=8, ram_mib=16384, seed=9)
    t = guest.truth
    runs = t["windows_runs"]

    def in_runs(pa: int) -> bool:
        return any(b <= pa // 0x1000 < b + c for b, c in runs)

    pas = [t["dtb"], t["kdbg"]["pa"], t["kuser_shared_data"]["pa"], t["kd_version_block"]["pa"], t["kernel"]["pa"]]
    for cpu in t["processors"]:
        pas += [cpu["kpcr_pa"], cpu["kprcb_pa"], cpu["context_pa"]]
    assert all(in_runs(pa) for pa in pas)
    for addr, size in t["reserved_ranges"]:
        assert not any(addr <= pa < addr + size for pa in pas)
    windows_pages = [pfn for pfn in guest.mem.pages if in_runs(pfn * 0x1000)]
    assert sum(pfn >= 0x100000 for pfn in windows_pages) > len(windows_pages) // 2  # 12 of 16 GiB are high
    # and some pages QEMU dumps but Windows does not own carry data (firmware, ROM)
    assert any(not in_runs(pfn * 0x1000) for pfn in guest.mem.pages)


def test_self_ref_slot_is_randomized_per_seed() -> None:
    slots = {generate(GuestSpec(build=19041, cpus=1, ram_mib=256, seed=s)).truth["self_ref_slot"] for s in range(6)}
    assert len(slots) > 2 and 0x1EF not in slots and 0x1F0 not in slots
    assert generate(GuestSpec(build=9600, cpus=1, ram_mib=256, seed=3)).truth["self_ref_slot"] == 0x1ED


def test_not_crashed_has_empty_bugcheck_data(guest_file, open_memory) -> None:
    guest, path = guest_file(build=14393, cpus=2, ram_mib=768, seed=2, crashed=False)
    mem = open_memory(path, guest.truth["dtb"])
    assert mem.virt(guest.truth["bugcheck"]["va"], 40) == bytes(40)
    assert guest.truth["bugcheck"]["code"] == 0


def test_64_cpus_and_64_gib(tmp_path, open_memory) -> None:
    guest = generate(GuestSpec(build=19041, cpus=64, ram_mib=65536, seed=4, crashed=True))
    path = tmp_path / "big.elf"
    with path.open("wb") as fh:
        write_qemu_elf(fh, guest)
    _, phdrs, notes = parse_elf(path)
    assert len(notes) == 128 and sum(p.p_filesz for p in phdrs[1:]) == 65536 * 2**20 + 0x40000 - 0x20000
    mem = open_memory(path, guest.truth["dtb"])
    last = guest.truth["processors"][63]
    assert mem.u32(last["kprcb"] + BUILDS[19041].off("_KPRCB.Number")) == 63


@pytest.mark.slow
@pytest.mark.parametrize("ram_mib", [4096, 16384])
def test_fast_and_sparse(tmp_path, ram_mib: int) -> None:
    start = time.monotonic()
    guest = generate(GuestSpec(build=19041, cpus=4, ram_mib=ram_mib, seed=1, crashed=True))
    path = tmp_path / "g.elf"
    with path.open("wb") as fh:
        size = write_qemu_elf(fh, guest)
    elapsed = time.monotonic() - start
    st = os.stat(path)
    assert st.st_size == size > ram_mib * 2**20
    assert elapsed < 60, elapsed
    assert st.st_blocks * 512 < 64 * 2**20, st.st_blocks  # only touched pages take disk space


def test_raw_image_matches_elf(tmp_path, open_memory, guest_file) -> None:
    guest, path = guest_file(build=9600, cpus=2, ram_mib=5120, seed=8)
    raw = tmp_path / "g.raw"
    with raw.open("wb") as fh:
        write_raw(fh, guest)
    mem = open_memory(path, guest.truth["dtb"])
    with raw.open("rb") as fh:
        for pa in (guest.truth["kdbg"]["pa"], guest.truth["dtb"], guest.truth["processors"][1]["kprcb_pa"]):
            fh.seek(pa & ~0xFFF)
            assert fh.read(0x1000) == mem.phys(pa & ~0xFFF, 0x1000)
    assert raw.stat().st_size == 0x100000000 + 3 * 2**30


def test_filler_chunks_for_benchmarks(tmp_path, open_memory) -> None:
    guest = generate(GuestSpec(build=19041, cpus=1, ram_mib=2048, seed=6, filler_mib=32))
    path = tmp_path / "f.elf"
    with path.open("wb") as fh:
        write_qemu_elf(fh, guest)
    chunks = guest.truth["filler_chunks"]
    assert len(chunks) == 16 and all(c % 0x200000 == 0 for c in chunks)
    mem = open_memory(path, guest.truth["dtb"])
    seed = guest.mem.filler[chunks[3] // 0x1000]
    assert mem.phys(chunks[3], 0x200000) == guest.mem.filler_bytes(seed)
    runs = guest.truth["windows_runs"]
    assert all(any(b <= c // 0x1000 and c // 0x1000 + 512 <= b + n for b, n in runs) for c in chunks)
