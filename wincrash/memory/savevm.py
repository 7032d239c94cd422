"""QEMU savevm / migration streams (what `virsh save` and `migrate "exec:cat > f"` write) as a memory source.

The stream is parsed by volatility3's QemuSuspendLayer; we only take its page map: every RAM page
stored raw becomes a segment pointing into the file (so the writers can still copy kernel-side),
and pages QEMU sent as "zero" are left absent (they read as zeros). The stream carries no vCPU
notes that we decode, so Windows is then found by scanning and processor contexts come from
Windows' own KPRCB state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from wincrash.errors import WincrashError
from wincrash.formats.dump import MachineType
from wincrash.memory.segments import MemoryMap, PackedSegments, Segment, segment_starts

__all__ = ["PackedSegments", "QemuSavevm", "savevm_segments", "segment_starts"]

PAGE = 0x1000


def savevm_segments(path: Path, fh: BinaryIO) -> tuple[PackedSegments, int]:
    """(segments, number of pages QEMU sent with a non-zero fill byte) of a QEVM stream.

    Raises WincrashError for a stream volatility3 cannot read: volatility3 raises LayerException,
    but also JSONDecodeError, UnicodeDecodeError, ValueError or KeyError on a truncated or damaged
    stream (the vmstate JSON at its end), all of which mean the same to the user.
    """
    try:
        from volatility3.framework import contexts
        from volatility3.framework.layers.physical import FileLayer
        from volatility3.framework.layers.qemu import QemuSuspendLayer
    except ImportError as exc:  # pragma: no cover - volatility3 is a dependency
        raise WincrashError(f"reading QEMU savevm streams needs volatility3 ({exc})") from None
    ctx = contexts.Context()
    ctx.config["wincrash_file.location"] = Path(path).resolve().as_uri()
    ctx.add_layer(FileLayer(ctx, "wincrash_file", "wincrash_file"))
    ctx.config["wincrash_qemu.base_layer"] = "wincrash_file"
    try:
        layer = QemuSuspendLayer(ctx, "wincrash_qemu", "wincrash_qemu")
        mappings = list(layer.mapping(0, layer.maximum_address + 1, ignore_errors=True))
    except Exception as exc:  # noqa: BLE001 - any failure inside volatility3's parser means a damaged stream
        detail = " ".join(str(exc).split())[:160] or exc.__class__.__name__
        raise WincrashError(f"{path}: not a QEMU savevm stream volatility3 can read (truncated or damaged: "
                            f"{detail})") from None
    segments = PackedSegments()
    nonzero_fill = 0
    for offset, length, mapped_offset, mapped_length, _layer in mappings:
        if mapped_length == length:
            segments.append(Segment(offset, length, mapped_offset, length))
        elif os.pread(fh.fileno(), 1, mapped_offset) != b"\0":  # a page QEMU sent as one fill byte
            nonzero_fill += length // PAGE
    return segments, nonzero_fill


class QemuSavevm:
    """Container format: a QEMU savevm/migration stream ('QEVM'), read through volatility3."""

    kind = "qemu-savevm"

    @staticmethod
    def detect(head: bytes, size: int) -> bool:
        """'QEVM' magic at offset 0."""
        return head[:4] == b"QEVM"

    @staticmethod
    def map(path: Path, fh: BinaryIO, size: int) -> MemoryMap:
        """The stream's raw RAM pages as segments; pages sent as a fill byte read as zeros (noted)."""
        segments, nonzero_fill = savevm_segments(path, fh)
        notes = (f"{nonzero_fill} pages stored with a non-zero fill byte read as zeros",) if nonzero_fill else ()
        return MemoryMap(QemuSavevm.kind, segments, (), int(MachineType.AMD64), None, notes)
