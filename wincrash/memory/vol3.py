"""Physical layers that volatility3 builds over a file, turned into our segments.

volatility3 knows many memory containers (LiME, AVML, QEMU savevm streams, VMware, ...). Each layer's
``mapping()`` says where every guest-physical range lives in the layer below; where that is the file
itself and the bytes are stored plainly (mapped length == length), the range becomes a Segment that
the writers copy kernel-side. Ranges stored in another form (a QEMU page sent as one fill byte, a
compressed AVML block) are reported back to the caller instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wincrash.errors import WincrashError
from wincrash.memory.segments import PackedSegments, Segment


def layer_mappings(path: Path, layer_class: Any, start: int = 0, unreadable: str = ""
                   ) -> Iterator[tuple[int, int, int, int]]:
    """(guest-physical address, length, file offset, stored length) of every range ``layer_class`` maps.

    ``start``: the container begins at this byte of the file (a QEMU stream after libvirt's header);
    file offsets are given from the start of the file. Raises WincrashError when volatility3 cannot
    read it; ``unreadable`` words that error (default: "volatility3's <layer> cannot read it").
    """
    unreadable = unreadable or f"volatility3's {layer_class.__name__} cannot read it"
    try:
        from volatility3.framework import contexts
        from volatility3.framework.exceptions import LayerException
        from volatility3.framework.layers.physical import FileLayer
        from volatility3.framework.layers.segmented import SegmentedLayer
    except ImportError as exc:  # pragma: no cover - volatility3 is a dependency
        raise WincrashError(f"reading this input needs volatility3 ({exc})") from None
    ctx = contexts.Context()
    ctx.config["wincrash_file.location"] = Path(path).absolute().as_uri()  # not resolve(): /proc/self/fd/N stays
    ctx.add_layer(FileLayer(ctx, "wincrash_file", "wincrash_file"))
    base = "wincrash_file"
    if start:
        size = ctx.layers[base].maximum_address + 1 - start

        class _Skip(SegmentedLayer):  # the file from ``start`` on, as a layer of its own
            def _load_segments(self) -> None:
                self._segments = [(0, start, size, size)]

        ctx.config["wincrash_skip.base_layer"] = base
        ctx.add_layer(_Skip(ctx, "wincrash_skip", "wincrash_skip"))
        base = "wincrash_skip"
    ctx.config["wincrash_mem.base_layer"] = base
    try:
        layer = layer_class(ctx, "wincrash_mem", "wincrash_mem")
        mappings = list(layer.mapping(layer.minimum_address, layer.maximum_address + 1 - layer.minimum_address,
                                      ignore_errors=True))
    except LayerException as exc:
        raise WincrashError(f"{path}: {unreadable} ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - JSONDecodeError, UnicodeDecodeError, ValueError, KeyError...
        # volatility3's parsers raise more than LayerException on a truncated or damaged stream (the vmstate
        # JSON at its end, a segment table of nothing): all mean the same to the user.
        detail = " ".join(str(exc).split())[:160] or exc.__class__.__name__
        raise WincrashError(f"{path}: {unreadable} (truncated or damaged: {exc.__class__.__name__}: {detail})"
                            ) from None
    for offset, length, mapped_offset, mapped_length, _layer in mappings:
        yield offset, length, mapped_offset + start, mapped_length


PHYSICAL_LIMIT = 1 << 52  # x64 physical addresses have at most 52 bits (Intel SDM vol. 3, 4.1.4)


def plain_segments(mappings: Iterator[tuple[int, int, int, int]]) -> tuple[PackedSegments, list[tuple[int, int]]]:
    """(segments of the plainly stored ranges, [(file offset, length)] of the other ranges)."""
    segments = PackedSegments()
    other: list[tuple[int, int]] = []
    for offset, length, mapped_offset, mapped_length in mappings:
        if not 0 < length <= PHYSICAL_LIMIT or not 0 <= offset <= PHYSICAL_LIMIT - length or mapped_offset < 0:
            raise WincrashError(f"a memory range of {length:#x} bytes at guest-physical {offset:#x} (file offset "
                                f"{mapped_offset:#x}) lies outside any physical address (x64: 52 bits): "
                                "damaged header")
        if mapped_length == length:
            segments.append(Segment(offset, length, mapped_offset, length))
        else:
            other.append((mapped_offset, length))
    return segments, other
