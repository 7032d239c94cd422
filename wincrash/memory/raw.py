"""Raw physical memory images, and the dump formats recognised but not convertible."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from wincrash.errors import WincrashError
from wincrash.memory.segments import MemoryMap, Segment

PAGE = 0x1000
UNCONVERTIBLE_MAGICS = (b"MDMP", b"PAGE", b"HIBR", b"hibr")  # minidump, 32-bit dump, hibernation file


class Raw:
    """Container format: a raw image of guest-physical memory from address 0 (anything not otherwise recognised)."""

    kind = "raw"

    @staticmethod
    def detect(head: bytes, size: int) -> bool:
        """Always: the last format tried."""
        return True

    @staticmethod
    def map(path: Path, fh: BinaryIO, size: int) -> MemoryMap:
        """One segment: file offset N holds guest-physical address N. WincrashError under one page."""
        if size < PAGE:
            raise WincrashError(f"{path}: too small to be a memory image ({size} bytes)")
        return MemoryMap(Raw.kind, [Segment(0, size, 0, size)])


class Unconvertible:
    """Formats recognised by their magic that `convert` cannot read: a clear error instead of a raw image."""

    kind = "unconvertible"

    @staticmethod
    def detect(head: bytes, size: int) -> bool:
        """Minidump, 32-bit crash dump, hibernation file or kdump magic at offset 0."""
        return head[:4] in UNCONVERTIBLE_MAGICS or head[:8] == b"KDUMP   "

    @staticmethod
    def map(path: Path, fh: BinaryIO, size: int) -> MemoryMap:
        """Always raises WincrashError naming the formats that can be converted."""
        raise WincrashError(f"{path}: this input format cannot be converted (use a QEMU "
                            "dump-guest-memory ELF, a savevm stream, a raw memory image or a 64-bit full/bitmap DMP)")
