"""ntoskrnl's image: where its sections are (from the build's real symbol RVAs), its headers and variables.

The kernel is mapped with 2 MiB pages at a random 2 MiB-aligned base, like Windows maps it; .data holds every
variable the generator writes at its real RVA, so a converter reading the real PDB finds them where it looks.
"""

from __future__ import annotations

from wincrash_testkit.synth import pe
from wincrash_testkit.synth.paging import RW, A, D, G, P
from wincrash_testkit.synth.physmem import LARGE, PAGE
from wincrash_testkit.synth.state import Builder

# Functions whose RVAs we use as code addresses (IDT handlers, vCPU RIPs).
CODE_SYMBOLS = ("KeBugCheckEx", "KiIdleLoop", "KiDivideErrorFault", "KiPageFault")
# Kernel variables the generator writes: they define where .data is.
DATA_SYMBOLS = ("KdDebuggerDataBlock", "KdVersionBlock", "KdpDataBlockEncoded", "KdpDebuggerDataListHead",
                "KiWaitNever", "KiWaitAlways", "KiBugCheckData", "PsLoadedModuleList", "PsActiveProcessHead",
                "PspCidTable", "MmPfnDatabase", "MmPhysicalMemoryBlock", "KiProcessorBlock", "KeLoaderBlock",
                "KeNumberProcessors", "PsInitialSystemProcess", "KdDebuggerEnabled", "KdDebuggerNotPresent",
                "KeTimeIncrement")
KERNEL_EXPORTS = ("KdDebuggerEnabled", "KdDebuggerNotPresent", "KeBugCheckEx", "KeCapturePersistentThreadState",
                  "KeNumberProcessors", "MmGetPhysicalMemoryRanges", "MmHighestUserAddress", "MmSystemRangeStart",
                  "MmUserProbeAddress", "NtBuildLab", "NtBuildNumber", "PsInitialSystemProcess",
                  "PsLoadedModuleList")

POOLCODE_SIZE = 0x2000  # the pool allocator's non-paged code section, right after .text in every x64 ntoskrnl
# (MemProcFS recognises ntoskrnl by 'MZ' and this section's name in its first page)


def plan_kernel(b: Builder) -> None:
    """Choose the kernel base and lay out its sections around the real RVAs (.text, POOLCODE, PAGE, .data, ...)."""
    wb, rng = b.wb, b.rng
    rvas = wb.rvas
    if b.spec.build == 7601:
        b.kern_base = 0xFFFFF80000000000 + rng.randrange(0x10, 0x30) * LARGE
    else:
        b.kern_base = 0xFFFFF80000000000 + rng.randrange(0x10, 0x4000) * LARGE
    data_lo = min(rvas[s] for s in DATA_SYMBOLS) & ~0xFFF
    data_hi = -(-(max(rvas[s] for s in DATA_SYMBOLS) + 0x400) // PAGE) * PAGE
    b.extras_rva = data_hi  # one page for variables this PDB does not name (e.g. MmHighestPhysicalPage)
    b.extras_used = 0
    b.pcr0_rva = data_hi + PAGE  # CPU 0's KPCR lives in .data, like KiInitialPcr
    pcr_end = b.pcr0_rva + -(-wb.sizes["_KPCR"] // PAGE) * PAGE
    text_end = -(-(max(rvas[s] for s in CODE_SYMBOLS) + 0x20000) // PAGE) * PAGE
    text_end = min(text_end, data_lo - 0x20000)
    pool_code_end = text_end + POOLCODE_SIZE
    page_end = text_end + ((data_lo - text_end) * 3 // 5) & ~0xFFF
    late = [r for r in rvas.values() if r >= pcr_end]
    late_end = -(-(max(late) + 0x10000) // PAGE) * PAGE if late else pcr_end + 0x40000
    init_end = late_end + 0x60000
    b.size_of_image = init_end + 0x6000
    b.sections = [
        pe.Section(".text", 0x1000, text_end - 0x1000, pe.TEXT),
        pe.Section("POOLCODE", text_end, POOLCODE_SIZE, pe.TEXT),
        pe.Section("PAGE", pool_code_end, page_end - pool_code_end, pe.PAGECODE),
        pe.Section(".rdata", page_end, data_lo - page_end, pe.RDATA),
        pe.Section(".data", data_lo, pcr_end - data_lo, pe.DATA),
        pe.Section("PAGEKD", pcr_end, late_end - pcr_end, pe.PAGECODE),
        pe.Section("INIT", late_end, init_end - late_end, pe.INIT),
        pe.Section(".reloc", init_end, 0x6000, pe.RELOC),
    ]
    b.text = (0x1000, text_end)
    # Export and debug directories: the last free pages of .rdata.
    used_pages = {r & ~0xFFF for r in rvas.values()}
    rva = (data_lo - PAGE) & ~0xFFF
    while rva in used_pages or rva - PAGE in used_pages:
        rva -= PAGE
    b.exports_rva = rva - PAGE
    b.debug_rva = rva


def map_kernel(b: Builder) -> None:
    """Map the image (2 MiB pages), write its PE headers, export and debug directories, code and variables."""
    chunks = -(-b.size_of_image // LARGE)
    b.kernel_pas = []
    for i in range(chunks):
        pa = b.alloc.large()
        b.space.map_2m(b.kern_base + i * LARGE, pa, P | RW | A | D | G)
        b.kernel_pas.append(pa)
    wb = b.wb
    timestamp = b.rng.randrange(0x50000000, 0x60000000)
    exports = {name: wb.rvas[name] for name in KERNEL_EXPORTS}
    export_blob = pe.export_directory(b.exports_rva, "ntoskrnl.exe", exports, timestamp)
    rsds = pe.codeview_record("ntkrnlmp.pdb", wb.pdb_guid, wb.pdb_age)
    debug = pe.debug_directory(b.debug_rva + 0x40, len(rsds), timestamp)
    b.header_page = pe.pe_headers(
        image_base=b.kern_base, size_of_image=b.size_of_image, sections=b.sections,
        entry_rva=wb.rvas["KiSystemStartup"], timestamp=timestamp, os_version=(wb.nt_major, wb.nt_minor),
        export_dir=(b.exports_rva, len(export_blob)), debug_dir=(b.debug_rva, len(debug)))
    b.space.write(b.kern_base, b.header_page)
    b.space.write(b.kern_base + b.exports_rva, export_blob)
    b.space.write(b.kern_base + b.debug_rva, debug)
    b.space.write(b.kern_base + b.debug_rva + 0x40, rsds)
    # Some code pages, so that .text is not all zeros (never starting with 'MZ').
    code_pages = {b.sym(s) & ~0xFFF for s in CODE_SYMBOLS}
    for _ in range(24):
        code_pages.add((b.kern_base + b.rng.randrange(*b.text)) & ~0xFFF)
    for va in sorted(code_pages):
        b.space.write(va, b"\xcc\xcc" + b.rng.randbytes(PAGE - 2))
    nt_build_number = 0xF0000000 | b.spec.build
    b.space.write_u32(b.sym("NtBuildNumber"), nt_build_number)
    b.space.write(b.sym("NtBuildLab"), wb.nt_build_lab.encode() + b"\x00")
    b.space.write_u32(b.sym("KeNumberProcessors"), b.spec.cpus)
    b.space.write(b.sym("KdDebuggerEnabled"), b"\x00")
    b.space.write(b.sym("KdDebuggerNotPresent"), b"\x01")
    b.space.write_u64(b.sym("MmHighestUserAddress"), 0x7FFFFFFEFFFF)
    b.space.write_u64(b.sym("MmUserProbeAddress"), 0x7FFFFFFF0000)
    b.space.write_u64(b.sym("MmSystemRangeStart"), 0xFFFF800000000000)
    b.space.write_u32(b.sym("KeTimeIncrement"), 156250)
    b.space.write_u64(b.sym("MmPfnDatabase"), b.pfn_database)
    b.truth["kernel"] = {
        "base": b.kern_base, "pa": b.kernel_pas[0], "size_of_image": b.size_of_image,
        "large_page_pas": list(b.kernel_pas), "pdb_name": "ntkrnlmp.pdb", "pdb_guid": wb.pdb_guid,
        "pdb_age": wb.pdb_age, "timestamp": timestamp, "nt_build_number": nt_build_number,
        "nt_build_lab": wb.nt_build_lab, "exports": {k: b.kern_base + v for k, v in exports.items()},
        "sections": [{"name": s.name, "rva": s.rva, "size": s.vsize} for s in b.sections],
    }
