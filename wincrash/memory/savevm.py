"""QEMU savevm / migration streams (what `virsh save` and `migrate "exec:cat > f"` write) as a memory source.

The stream is parsed by volatility3's QemuSuspendLayer; we only take its page map: every RAM page
stored raw becomes a segment pointing into the file (so the writers can still copy kernel-side),
and pages QEMU sent as "zero" are left absent (they read as zeros). The stream carries no vCPU
notes that we decode, so Windows is then found by scanning and processor contexts come from
Windows' own KPRCB state.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, overload

from wincrash.errors import WincrashError
from wincrash.memory.qemu_elf import Segment


class PackedSegments(Sequence[Segment]):
    """Many page-sized segments in three arrays (24 bytes a page instead of a Python object)."""

    def __init__(self) -> None:
        self.paddr = array("Q")
        self.size = array("Q")
        self.offset = array("Q")

    def append(self, seg: Segment) -> None:
        if self.paddr and self.paddr[-1] + self.size[-1] == seg.paddr and \
                self.offset[-1] + self.size[-1] == seg.offset:
            self.size[-1] += seg.size  # contiguous in memory and in the file: one segment
            return
        self.paddr.append(seg.paddr)
        self.size.append(seg.size)
        self.offset.append(seg.offset)

    def __len__(self) -> int:
        return len(self.paddr)

    @overload
    def __getitem__(self, i: int) -> Segment: ...
    @overload
    def __getitem__(self, i: slice) -> list[Segment]: ...

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return Segment(self.paddr[i], self.size[i], self.offset[i], self.size[i])

    def __iter__(self) -> Iterator[Segment]:
        return (self[i] for i in range(len(self)))

    def sort(self, key=None) -> None:  # noqa: ANN001 - already sorted: pages arrive in address order per block
        order = sorted(range(len(self)), key=lambda i: self.paddr[i])
        if order != list(range(len(self))):
            self.paddr, self.size, self.offset = (array("Q", (a[i] for i in order))
                                                  for a in (self.paddr, self.size, self.offset))


def savevm_segments(path: Path, fh: BinaryIO) -> tuple[PackedSegments, int]:
    """(segments, number of pages QEMU sent with a non-zero fill byte) of a QEVM stream."""
    try:
        from volatility3.framework import contexts
        from volatility3.framework.exceptions import LayerException
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
    except LayerException as exc:
        raise WincrashError(f"{path}: not a QEMU savevm stream volatility3 can read ({exc})") from None
    segments = PackedSegments()
    nonzero_fill = 0
    for offset, length, mapped_offset, mapped_length, _layer in mappings:
        if mapped_length == length:
            segments.append(Segment(offset, length, mapped_offset, length))
        elif os.pread(fh.fileno(), 1, mapped_offset) != b"\0":  # a page QEMU sent as one fill byte
            nonzero_fill += length // 0x1000
    return segments, nonzero_fill


def segment_starts(segments: Sequence[Segment]) -> Sequence[int]:
    """Start addresses for bisect, without building a list for packed segments."""
    return segments.paddr if isinstance(segments, PackedSegments) else [s.paddr for s in segments]


