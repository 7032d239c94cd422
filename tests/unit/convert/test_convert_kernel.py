"""`wincrash convert --format kernel`: DumpType 5 'SDMP' holding the kernel's memory only.

kdmp-parser (independent of wincrash) reads the dump; the process and module lists are walked through
its virtual reads and compared with the generator's truth, so the dump holds what analysis needs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import kdmp_parser
import pytest
from helpers import dump_read_va, run_wincrash, u64
from wincrash_testkit.synth.builds import get_build
from wincrash_testkit.synth.guest import GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf

PAGE = 0x1000
CASES = [(19041, 4, 1024, True), (17763, 2, 6144, False), (7601, 2, 1024, True)]


def kernel_dump(tmp: Path, build: int, cpus: int, ram: int, crashed: bool, patch=None):  # noqa: ANN001, ANN201
    guest = generate(GuestSpec(build=build, cpus=cpus, ram_mib=ram, seed=build + 40, crashed=crashed))
    if patch is not None:
        patch(guest)
    elf = tmp / "g.elf"
    with open(elf, "wb") as fh:
        write_qemu_elf(fh, guest)
    out = tmp / "KERNEL.DMP"
    proc = run_wincrash("convert", elf, "-o", out, "--format", "kernel", "--json")
    assert proc.returncode == 0, proc.stderr
    return guest, out, json.loads(proc.stdout)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}cpu-{c[2]}MiB")
def converted(request, tmp_path_factory):
    return kernel_dump(tmp_path_factory.mktemp("kdump"), *request.param)


def walk(parser, head: int, dtb: int, limit: int = 1000) -> list[int]:  # noqa: ANN001
    """LIST_ENTRY addresses of a circular list, read through kdmp-parser."""
    entries, entry = [], u64(dump_read_va(parser, head, 8, dtb))
    while entry != head:
        assert len(entries) < limit, "list does not come back to its head"
        entries.append(entry)
        entry = u64(dump_read_va(parser, entry, 8, dtb))
    return entries


def test_header_and_summary(converted):
    guest, out, data = converted
    t = guest.truth
    p = kdmp_parser.KernelDumpParser(out)
    h = p.header
    assert h.DumpType.value == 5 and h.MinorVersion == t["build"] and h.NumberProcessors == t["cpus"]
    assert h.PfnDatabase == t["mm_pfn_database"]["value"]
    assert h.RequiredDumpSpace == out.stat().st_size
    with open(out, "rb") as fh:
        head = fh.read(0x2038)
    signature, valid = head[0x2000:0x2004], head[0x2004:0x2008]
    first, present, bits = struct.unpack_from("<QQQ", head, 0x2020)
    assert (signature, valid) == (b"SDMP", b"DUMP") and bits % 64 == 0
    runs_pages = t["physical_memory_block"]["number_of_pages"]
    assert present == data["pages_written"] < runs_pages and data["pages_in_runs"] == runs_pages
    assert data["pages_left_out"] == runs_pages - present
    assert out.stat().st_size == first + present * PAGE < data["full_dump_size"]
    assert data["full_dump_size"] == 0x2000 + runs_pages * PAGE


def test_kernel_virtual_addresses_translate(converted):
    guest, out, _data = converted
    t = guest.truth
    p = kdmp_parser.KernelDumpParser(out)
    dtb = p.header.DirectoryTableBase
    block = dump_read_va(p, t["kdbg"]["va"], 0x20, dtb)
    assert block[0x10:0x14] == b"KDBG" and u64(block, 0x18) == t["kernel"]["base"]
    for mod in t["modules"]:
        assert dump_read_va(p, mod["base"], 2, dtb) == b"MZ", mod["name"]
    for cpu in t["processors"]:
        ctx = dump_read_va(p, cpu["context_va"], 0x4D0, dtb)
        assert u64(ctx, 0xF8) == cpu["registers"]["rip"]
    assert p.context.SegCs == 0x10 and p.context.Rip == t["processors"][0]["registers"]["rip"]
    kuser = t["kuser_shared_data"]
    assert dump_read_va(p, kuser["va"], 0x1000, dtb) == guest.mem.read(kuser["pa"], PAGE)


def test_process_and_module_lists_walk(converted):
    guest, out, _data = converted
    t = guest.truth
    offsets = get_build(t["build"]).offsets
    p = kdmp_parser.KernelDumpParser(out)
    dtb = p.header.DirectoryTableBase
    got = []
    for link in walk(p, p.header.PsActiveProcessHead, dtb):
        ep = link - offsets["_EPROCESS.ActiveProcessLinks"]
        pid = u64(dump_read_va(p, ep + offsets["_EPROCESS.UniqueProcessId"], 8, dtb))
        name = dump_read_va(p, ep + offsets["_EPROCESS.ImageFileName"], 15, dtb).split(b"\0")[0].decode()
        process_dtb = u64(dump_read_va(p, ep + offsets["_KPROCESS.DirectoryTableBase"], 8, dtb))
        assert p.read_physical_page(process_dtb & ~0xFFF) is not None, f"{name}'s PML4 is not in the dump"
        got.append((name, pid, process_dtb))
    assert got == [(x["image_file_name"], x["pid"], x["dtb"]) for x in t["processes"]]  # EPROCESS keeps 14 chars
    modules = []
    for link in walk(p, p.header.PsLoadedModuleList, dtb):
        entry = link - offsets["_KLDR_DATA_TABLE_ENTRY.InLoadOrderLinks"]
        base = u64(dump_read_va(p, entry + offsets["_KLDR_DATA_TABLE_ENTRY.DllBase"], 8, dtb))
        size = struct.unpack("<I", dump_read_va(p, entry + offsets["_KLDR_DATA_TABLE_ENTRY.SizeOfImage"], 4, dtb))[0]
        name = dump_read_va(p, entry + offsets["_KLDR_DATA_TABLE_ENTRY.BaseDllName"], 16, dtb)
        length, buffer = struct.unpack_from("<H", name)[0], u64(name, 8)
        modules.append((dump_read_va(p, buffer, length, dtb).decode("utf-16-le"), base, size))
    assert modules == [(m["name"], m["base"], m["size"]) for m in t["modules"]]


def test_user_pages_and_unused_ram_are_left_out(converted):
    """A kernel dump is not a full one: the noise pages (RAM no kernel mapping reaches) are not in it."""
    guest, out, _data = converted
    p = kdmp_parser.KernelDumpParser(out)
    decoys = guest.truth["decoys"]
    for pa in decoys["kdbg_strings"][:10] + decoys["mz_pages"][:10]:
        assert p.read_physical_page(pa) is None, hex(pa)


def test_page_table_loops_and_wild_frames_are_bounded(tmp_path):
    """A PDPT entry pointing back at the PML4 (a loop other than the self-map) and entries whose frames lie
    far beyond RAM neither hang the walk nor add pages outside the runs."""
    def patch(guest) -> None:  # noqa: ANN001
        pml4 = guest.truth["dtb"]
        entries = struct.unpack("<512Q", guest.mem.read(pml4, PAGE))
        free = [i for i in range(256, 512) if not entries[i] & 1]
        loop_pdpt = 0x5000 * PAGE  # a zero page inside low RAM used as a PDPT
        assert 0x5000 not in guest.mem.pages
        guest.mem.write(pml4 + 8 * free[0], struct.pack("<Q", loop_pdpt | 0x63))
        guest.mem.write(loop_pdpt, struct.pack("<QQQ", pml4 | 0x63, (1 << 51) | 0xE3, 0x7FFFFFFFF000 | 0x63))
        guest.mem.write(pml4 + 8 * free[1], struct.pack("<Q", 0x000FFFFFFFFFF000 | 0x63))

    guest, out, data = kernel_dump(tmp_path, 19041, 1, 512, False, patch)
    runs = guest.truth["physical_memory_block"]["runs"]
    p = kdmp_parser.KernelDumpParser(out)
    assert data["pages_written"] < data["pages_in_runs"]
    assert p.read_physical_page(0x5000 * PAGE) is not None  # the extra table is kept
    with open(out, "rb") as fh:
        head = fh.read(0x2038)
        bits = struct.unpack_from("<Q", head, 0x2030)[0]
        bitmap = int.from_bytes(fh.read(bits // 8), "little")
    in_runs = sum(((1 << c) - 1) << b for b, c in runs)
    assert bitmap & ~in_runs == 0  # nothing outside Windows' runs
