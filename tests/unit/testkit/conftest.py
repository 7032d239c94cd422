"""Fixtures for the synthetic-guest tests: generated ELF files (cached per session) and an independent reader.

The reader is deliberately not our code: guest-physical memory comes from volatility3's Elf64Layer, and
virtual addresses are translated by a small page-table walker written here from the x64 manuals.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from wincrash_testkit.synth.guest import Guest, GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf


class GuestMemory:
    """Physical reads through volatility3's Elf64Layer, virtual reads through a hand-written 4-level walk."""

    def __init__(self, path: Path, dtb: int) -> None:
        from volatility3.framework import contexts
        from volatility3.framework.layers.elf import Elf64Layer
        from volatility3.framework.layers.physical import FileLayer

        ctx = contexts.Context()
        ctx.config["base.location"] = path.resolve().as_uri()
        ctx.add_layer(FileLayer(ctx, "base", "base"))
        ctx.config["mem.base_layer"] = "base"
        self.layer = Elf64Layer(ctx, "mem", "mem")
        ctx.add_layer(self.layer)
        self.dtb = dtb
        self.page_sizes: set[int] = set()

    def phys(self, pa: int, size: int) -> bytes:
        return bytes(self.layer.read(pa, size, pad=False))

    def translate(self, va: int) -> int:
        table = self.dtb
        for level, shift in enumerate((39, 30, 21, 12)):
            entry = struct.unpack("<Q", self.phys(table + ((va >> shift) & 0x1FF) * 8, 8))[0]
            if not entry & 1:
                raise LookupError(f"{va:#x} not present at level {4 - level}")
            addr = entry & 0x000F_FFFF_FFFF_F000
            if level in (1, 2) and entry & 0x80:  # 1 GiB / 2 MiB page
                size = 1 << shift
                self.page_sizes.add(size)
                return (addr & ~(size - 1)) | (va & (size - 1))
            table = addr
        self.page_sizes.add(0x1000)
        return table | (va & 0xFFF)

    def virt(self, va: int, size: int) -> bytes:
        out = b""
        while len(out) < size:
            cur = va + len(out)
            n = min(0x1000 - cur % 0x1000, size - len(out))
            out += self.phys(self.translate(cur), n)
        return out

    def u64(self, va: int) -> int:
        return struct.unpack("<Q", self.virt(va, 8))[0]

    def u32(self, va: int) -> int:
        return struct.unpack("<I", self.virt(va, 4))[0]

    def unicode_string(self, va: int) -> str:
        length, _, _, buf = struct.unpack("<HHIQ", self.virt(va, 16))
        return self.virt(buf, length).decode("utf-16-le")


@pytest.fixture(scope="session")
def guest_file(tmp_path_factory) -> Callable[..., tuple[Guest, Path]]:
    """guest_file(build=..., cpus=..., ...) -> (Guest, path of its QEMU ELF), generated once per spec."""
    cache: dict[GuestSpec, tuple[Guest, Path]] = {}
    folder = tmp_path_factory.mktemp("guests")

    def make(**kwargs) -> tuple[Guest, Path]:
        spec = GuestSpec(**kwargs)
        if spec not in cache:
            guest = generate(spec)
            path = folder / f"g{len(cache)}.elf"
            with path.open("wb") as fh:
                write_qemu_elf(fh, guest)
            cache[spec] = (guest, path)
        return cache[spec]

    return make


@pytest.fixture(scope="session")
def open_memory() -> Callable[[Path, int], GuestMemory]:
    return GuestMemory
