"""System-wide state: MmPhysicalMemoryBlock (Windows' RAM runs), KiBugCheckData and KUSER_SHARED_DATA."""

from __future__ import annotations

import struct

from wincrash_testkit.synth.builds import KUSER_SHARED_DATA_VA
from wincrash_testkit.synth.paging import KERNEL_DATA, NX, US, A, P
from wincrash_testkit.synth.spec import NMI_HARDWARE_FAILURE
from wincrash_testkit.synth.state import Builder

KUSER_USER_VA = 0x7FFE0000  # the user-mode read-only view of KUSER_SHARED_DATA


def _ksystem_time(value: int) -> bytes:
    """KSYSTEM_TIME: LowPart, High1Time, High2Time (High2 == High1 when consistent)."""
    return struct.pack("<IiI", value & 0xFFFFFFFF, value >> 32, value >> 32)


def memory_block(b: Builder) -> None:
    """MmPhysicalMemoryBlock (Windows' runs, not QEMU's blocks) and MmHighestPhysicalPage."""
    runs = b.layout.windows_runs
    npages = sum(c for _, c in runs)
    blob = struct.pack("<IIQ", len(runs), 0, npages) + b"".join(struct.pack("<QQ", b, c) for b, c in runs)
    desc = b.pool.alloc(len(blob), 16)
    b.space.write(desc, blob)
    b.space.write_u64(b.sym("MmPhysicalMemoryBlock"), desc)
    b.highest_page_var = b.extra(8) if "MmHighestPhysicalPage" not in b.wb.rvas \
        else b.sym("MmHighestPhysicalPage")
    b.space.write_u64(b.highest_page_var, b.layout.highest_page)
    b.truth["physical_memory_block"] = {"pointer_va": b.sym("MmPhysicalMemoryBlock"),
                                           "descriptor_va": desc, "runs": [list(r) for r in runs],
                                           "number_of_pages": npages}
    b.truth["mm_highest_physical_page"] = {"va": b.highest_page_var, "value": b.layout.highest_page}


def bugcheck(b: Builder) -> None:
    """KiBugCheckData: the code and 4 parameters when crashed (0x80 NMI by default), zeros otherwise."""
    va = b.sym("KiBugCheckData")
    if b.spec.crashed:
        code = b.spec.bugcheck_code
        if code == NMI_HARDWARE_FAILURE:
            params = [0x4F4454, 0, 0, 0]
        else:
            params = [b.rng.getrandbits(64) for _ in range(4)]
    else:
        code, params = 0, [0, 0, 0, 0]
    b.space.write(va, struct.pack("<5Q", code, *params))
    b.truth["bugcheck"] = {"va": va, "code": code, "params": params, "crashed": b.spec.crashed,
                              "cpu": 0 if b.spec.crashed else None}


def kuser(b: Builder) -> None:
    """KUSER_SHARED_DATA (kernel and user views of one page): times, version, product type, suite."""
    o, wb, rng = b.wb.offsets, b.wb, b.rng
    pa = b.alloc.page()
    b.space.map_4k(KUSER_SHARED_DATA_VA, pa, KERNEL_DATA)
    for space in (b.space, *b.process_spaces):  # the same page, read-only for user mode, in every process
        space.map_4k(KUSER_USER_VA, pa, P | US | A | NX)
    system_time = rng.randrange(132223104000000000, 133800000000000000)  # 2020 .. 2025 (FILETIME)
    interrupt_time = rng.randrange(600, 30 * 86400) * 10_000_000 + rng.randrange(10_000_000)
    server = b.spec.build in (9600, 14393, 17763)
    product_type = 3 if server else 1
    suite_mask = 0x112 if server else 0x110
    k = KUSER_SHARED_DATA_VA
    b.space.write_u32(k + o["_KUSER_SHARED_DATA.TickCountMultiplier"], 0x0FA00000)
    b.space.write(k + o["_KUSER_SHARED_DATA.InterruptTime"], _ksystem_time(interrupt_time))
    b.space.write(k + o["_KUSER_SHARED_DATA.SystemTime"], _ksystem_time(system_time))
    if "_KUSER_SHARED_DATA.NtBuildNumber" in o:
        b.space.write_u32(k + o["_KUSER_SHARED_DATA.NtBuildNumber"], b.spec.build)
    b.space.write_u32(k + o["_KUSER_SHARED_DATA.NtProductType"], product_type)
    b.space.write(k + o["_KUSER_SHARED_DATA.ProductTypeIsValid"], b"\x01")
    b.space.write_u32(k + o["_KUSER_SHARED_DATA.NtMajorVersion"], wb.nt_major)
    b.space.write_u32(k + o["_KUSER_SHARED_DATA.NtMinorVersion"], wb.nt_minor)
    b.space.write_u32(k + o["_KUSER_SHARED_DATA.SuiteMask"], suite_mask)
    b.truth["kuser_shared_data"] = {
        "va": KUSER_SHARED_DATA_VA, "pa": pa, "system_time": system_time, "interrupt_time": interrupt_time,
        "nt_build_number": b.spec.build if "_KUSER_SHARED_DATA.NtBuildNumber" in o else None,
        "product_type": product_type, "suite_mask": suite_mask, "nt_major": wb.nt_major,
        "nt_minor": wb.nt_minor}
