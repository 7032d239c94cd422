"""Decoys a converter must not be fooled by (stray KDBG tags, MZ pages, a stale ntoskrnl header), firmware
RAM Windows does not own, and bulk filler for benchmarks."""

from __future__ import annotations

import struct

from wincrash_testkit.synth.layout import MIB
from wincrash_testkit.synth.physmem import LARGE, PAGE
from wincrash_testkit.synth.state import Builder


def noise(b: Builder) -> None:
    """Random pages with decoys, firmware/ROM contents and filler chunks; records them in truth["decoys"]."""
    rng, mem = b.rng, b.mem
    count = b.spec.noise_pages
    if count is None:
        count = 64 + (b.spec.ram_mib // 1024) * 8
    decoys: dict[str, list[int]] = {"kdbg_strings": [], "mz_pages": [], "ntoskrnl_header_copy": []}
    for n in range(count):
        pa = b.alloc.page()
        page = bytearray(rng.randbytes(PAGE))
        kind = n % 10
        if kind == 0:  # stray 'KDBG' tags, one with a header-like shape but wrong contents
            for _ in range(rng.randint(1, 4)):
                off = rng.randrange(0, PAGE - 0x40, 8)
                page[off + 0x10:off + 0x18] = b"KDBG" + struct.pack("<I", rng.choice((0x340, 0x380)))
            decoys["kdbg_strings"].append(pa)
        elif kind == 1:  # MZ pages that are not the kernel
            page[0:2] = b"MZ"
            if rng.random() < 0.5:
                struct.pack_into("<I", page, 0x3C, 0x80)
                page[0x80:0x84] = b"PE\x00\x00"
            decoys["mz_pages"].append(pa)
        if page[:2] == b"MZ" and kind != 1:
            page[0] = 0
        mem.write(pa, bytes(page))
    # A stale copy of ntoskrnl's first page, as the file cache may hold (not mapped at KernBase).
    pa = b.alloc.page()
    mem.write(pa, b.header_page)
    decoys["ntoskrnl_header_copy"].append(pa)
    # RAM QEMU dumps but Windows does not own: firmware data, option ROM, BIOS.
    for addr, size in b.layout.reserved:
        mem.write(addr, rng.randbytes(min(size, PAGE)))
    mem.write(0xC0000, b"\x55\xaa" + rng.randbytes(PAGE - 2))
    mem.write(0xFFFF0000, rng.randbytes(PAGE))
    mem.write(0xFFFFF000, rng.randbytes(PAGE - 16) + b"\xea\x5b\xe0\x00\xf0" + bytes(11))
    b.truth["decoys"] = decoys
    for _ in range(b.spec.filler_mib * MIB // LARGE):
        mem.filler[b.alloc.large() // PAGE] = rng.getrandbits(64)
    b.truth["filler_chunks"] = sorted(pfn * PAGE for pfn in mem.filler)
