"""Kernel objects the converter walks: loaded drivers (PsLoadedModuleList) and threads (processes: processes.py)."""

from __future__ import annotations

import struct

from wincrash_testkit.synth import pe
from wincrash_testkit.synth.paging import RW, A, D, G, P
from wincrash_testkit.synth.physmem import LARGE, PAGE
from wincrash_testkit.synth.state import Builder

STACK_PAGES = 6  # kernel stack of each thread
DRIVERS = ("hal.dll", "kdcom.dll", "CI.dll", "ACPI.sys", "storport.sys", "disk.sys", "Ntfs.sys", "tcpip.sys",
           "volmgr.sys", "pci.sys", "partmgr.sys", "NDIS.SYS", "fltmgr.sys", "netvsc.sys", "vioscsi.sys")


def _unicode_string(length: int, buffer: int) -> bytes:
    """UNICODE_STRING: Length, MaximumLength (bytes), padding, Buffer."""
    return struct.pack("<HHIQ", length, length + 2, 0, buffer)


def load_drivers(b: Builder) -> None:
    """Map the first 8 drivers and a random choice of the rest after the kernel (PE images with CodeView)."""
    rng = b.rng
    names = list(DRIVERS[:8]) + rng.sample(DRIVERS[8:], rng.randint(0, len(DRIVERS) - 8))
    if b.spec.build == 7601:
        va = 0xFFFFF88000C00000 + rng.randrange(0, 0x400) * PAGE
    else:
        va = b.kern_base + -(-b.size_of_image // LARGE) * LARGE + rng.randrange(0x10, 0x400) * PAGE
    b.modules = [{"name": "ntoskrnl.exe", "full_name": r"\SystemRoot\system32\ntoskrnl.exe",
                     "base": b.kern_base, "size": b.size_of_image,
                     "entry": b.kern_base + b.wb.rvas["KiSystemStartup"]}]
    for name in names:
        npages = rng.randrange(0x8, 0x60)
        size = npages * PAGE
        for i in range(npages):
            b.space.map_4k(va + i * PAGE, b.alloc.page(), P | RW | A | D | G)
        text_size = (npages // 2) * PAGE
        sections = [pe.Section(".text", 0x1000, text_size - 0x1000, pe.TEXT),
                    pe.Section(".rdata", text_size, PAGE, pe.RDATA),
                    pe.Section(".data", text_size + PAGE, size - text_size - 2 * PAGE, pe.DATA),
                    pe.Section(".reloc", size - PAGE, PAGE, pe.RELOC)]
        rsds = pe.codeview_record(name.rsplit(".", 1)[0].lower() + ".pdb", rng.randbytes(16).hex().upper(), 1)
        timestamp = rng.randrange(0x50000000, 0x60000000)
        debug = pe.debug_directory(text_size + 0x40, len(rsds), timestamp)
        header = pe.pe_headers(image_base=va, size_of_image=size, sections=sections, entry_rva=0x1010,
                               timestamp=timestamp, os_version=(b.wb.nt_major, b.wb.nt_minor),
                               debug_dir=(text_size, len(debug)), dll=name.endswith(".dll"))
        b.space.write(va, header)
        b.space.write(va + text_size, debug)
        b.space.write(va + text_size + 0x40, rsds)
        folder = r"\SystemRoot\system32" if name.endswith(".dll") else r"\SystemRoot\System32\drivers"
        b.modules.append({"name": name, "full_name": f"{folder}\\{name}", "base": va, "size": size,
                             "entry": va + 0x1010})
        va += size + rng.randrange(1, 0x40) * PAGE


def module_list(b: Builder) -> None:
    """PsLoadedModuleList: a KLDR_DATA_TABLE_ENTRY per module (ntoskrnl first), linked in load order."""
    o = b.wb.offsets
    size = b.wb.sizes["_KLDR_DATA_TABLE_ENTRY"]
    entries = []
    for mod in b.modules:
        entry = b.pool.alloc(size)
        full_va, full_len = b.string(mod["full_name"])
        base_va, base_len = b.string(mod["name"])
        b.space.write_u64(entry + o["_KLDR_DATA_TABLE_ENTRY.DllBase"], mod["base"])
        b.space.write_u64(entry + o["_KLDR_DATA_TABLE_ENTRY.EntryPoint"], mod["entry"])
        b.space.write_u32(entry + o["_KLDR_DATA_TABLE_ENTRY.SizeOfImage"], mod["size"])
        b.space.write(entry + o["_KLDR_DATA_TABLE_ENTRY.FullDllName"], _unicode_string(full_len, full_va))
        b.space.write(entry + o["_KLDR_DATA_TABLE_ENTRY.BaseDllName"], _unicode_string(base_len, base_va))
        b.space.write_u32(entry + o["_KLDR_DATA_TABLE_ENTRY.Flags"], 0x49104000)
        mod["ldr_entry"] = entry
        entries.append(entry + o["_KLDR_DATA_TABLE_ENTRY.InLoadOrderLinks"])
    b.link_list(b.sym("PsLoadedModuleList"), entries)
    b.truth["modules"] = b.modules


def thread(b: Builder, process: int, stack_top: int, rsp: int, cpu: int) -> int:
    """A running ETHREAD of ``process`` on ``cpu`` whose stack ends at ``stack_top``; returns its address."""
    o = b.wb.offsets
    th = b.pool.alloc(b.wb.sizes["_ETHREAD"], 16)
    b.space.write_u64(th + o["_KTHREAD.InitialStack"], stack_top)
    b.space.write_u64(th + o["_KTHREAD.StackBase"], stack_top)
    b.space.write_u64(th + o["_KTHREAD.StackLimit"], stack_top - STACK_PAGES * PAGE)
    b.space.write_u64(th + o["_KTHREAD.KernelStack"], rsp)
    b.space.write_u64(th + o["_KTHREAD.ApcState"] + o["_KAPC_STATE.Process"], process)
    b.space.write_u64(th + o["_KTHREAD.Process"], process)
    b.space.write(th + o["_KTHREAD.State"], b"\x02")  # Running
    b.space.write_u32(th + o["_KTHREAD.NextProcessor"], cpu)
    return th
