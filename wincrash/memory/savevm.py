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

from wincrash.formats.dump import MachineType
from wincrash.memory.segments import MemoryMap, PackedSegments, segment_starts
from wincrash.memory.vol3 import layer_mappings, plain_segments

__all__ = ["PackedSegments", "QemuSavevm", "savevm_segments", "segment_starts"]

PAGE = 0x1000


def savevm_segments(path: Path, fh: BinaryIO, start: int = 0) -> tuple[PackedSegments, int]:
    """(segments, number of pages QEMU sent with a non-zero fill byte) of the QEVM stream at byte ``start``
    of the file (0, or after a libvirt save image's header and XML).

    The page map is volatility3's QemuSuspendLayer (memory.vol3): its plainly stored ranges become
    segments, a page QEMU sent as one fill byte reads as zeros. Raises WincrashError for a stream
    volatility3 cannot read (truncated or damaged: its vmstate JSON, a segment table of nothing).
    """
    from volatility3.framework.layers.qemu import QemuSuspendLayer

    segments, other = plain_segments(layer_mappings(path, QemuSuspendLayer, start,
                                                    "not a QEMU savevm stream volatility3 can read"))
    nonzero_fill = sum(length // PAGE for offset, length in other if os.pread(fh.fileno(), 1, offset) != b"\0")
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
