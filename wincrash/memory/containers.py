"""Memory files in containers: libvirt save images, compressed streams, kdump, LiME; and files that are not memory.

``open_container`` is the one hook memory/source.py's dispatcher calls before it falls back to a
raw image: it recognises these inputs by content and returns a PhysicalSource (or raises one
WincrashError line), or None for what it does not know. Inputs whose pages are not stored plainly
(kdump, compressed) are decoded into an unnamed scratch file next to the output (memory.scratch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from wincrash.errors import WincrashError
from wincrash.formats.compression import compression_of
from wincrash.formats.libvirt_save import (
    COMPRESSION,
    HEADER_SIZE,
    PADDED_HEADER_SIZE,
    PARTIAL_MAGIC,
    SaveHeader,
    header_length,
    is_libvirt_save,
)
from wincrash.formats.not_memory import HEAD_BYTES, what_is_it
from wincrash.memory.physical import PhysicalSource
from wincrash.memory.qemu_elf import Segment
from wincrash.memory.scratch import fd_path

if TYPE_CHECKING:
    from collections.abc import Callable

LIME_MAGIC = b"EMiL"  # 0x4C694D45 little-endian (LiME's lime_mem_range_header)
EM_X86_64 = 62


def open_container(path: Path, fh: BinaryIO, size: int, scratch_dir: Path | None,
                   reopen: Callable[[Path, Path | None], PhysicalSource]) -> PhysicalSource | None:
    """A PhysicalSource for a container input, None when ``fh`` is none of them; WincrashError when unusable.

    ``scratch_dir``: where a decoded copy may be written (convert passes the output's directory; None:
    the system temp directory). ``reopen``: memory.source.open_source, for what a compressed stream
    holds (any format). ``fh`` is taken over: closed on error, or kept/closed by the source.
    """
    fd = fh.fileno()
    head = os.pread(fd, HEAD_BYTES, 0)
    from wincrash.memory.kdump import is_kdump

    if is_kdump(head[:16]):
        return _open_kdump(path, fh, size, scratch_dir)
    if is_libvirt_save(head[:16]):
        return _open_libvirt_save(path, fh, size, head, scratch_dir, reopen)
    compression = compression_of(head)
    if compression:
        return _open_compressed(path, fh, 0, compression, f"{compression}-compressed", scratch_dir, reopen)
    if head[:4] == LIME_MAGIC:
        return _open_lime(path, fh, size)
    tail = os.pread(fd, 512, max(0, size - 512)) if size >= 1024 else b""
    named = what_is_it(head, tail, size)
    if named:
        fh.close()
        raise WincrashError(f"{path}: {named[0]}: {named[1]}")
    return None


def _source(path: Path, fh: BinaryIO, kind: str, segments: list[Segment], cpus: list, machine: int = EM_X86_64,
            missing: list[tuple[int, int]] | None = None) -> PhysicalSource:
    return PhysicalSource(path, fh, kind, segments, cpus, machine, missing or None)


def _open_kdump(path: Path, fh: BinaryIO, size: int, scratch_dir: Path | None) -> PhysicalSource:
    from wincrash.memory.kdump import decode, read_layout

    with fh:
        layout, reader = read_layout(fh, size)
        decoded = decode(layout, reader, scratch_dir, progress=os.isatty(2))
    kind = f"kdump ({layout.form}, {decoded.compression})"
    source = _source(path, decoded.fh, kind, decoded.segments, list(layout.cpus), missing=decoded.missing)
    if layout.truncated:
        source.notes.append("the flattened kdump stream ends before its end marker (interrupted dump)")
    return source


def _open_compressed(path: Path, fh: BinaryIO, start: int, compression: str, what: str,
                     scratch_dir: Path | None, reopen: Callable[[Path, Path | None], PhysicalSource]) -> PhysicalSource:
    from wincrash.memory.compressed import decompress_to_scratch

    with fh:
        scratch, truncated = decompress_to_scratch(path, fh, start, compression, scratch_dir,
                                                   progress=os.isatty(2))
    shown = str(fd_path(scratch))
    try:
        if os.pread(scratch.fileno(), 4, 0) == b"QEVM":
            inner = _open_qevm_at(fd_path(scratch), scratch, 0)
        else:
            with scratch:
                inner = reopen(fd_path(scratch), scratch_dir)  # reopens the unnamed file, which lives on
    except WincrashError as exc:
        detail = str(exc).replace(shown, f"{path} (decompressed)")
        if truncated:
            raise WincrashError(f"{path}: the input is truncated: its {compression} stream ends early, and what it "
                                f"holds cannot be read ({detail}): take or copy the file again") from None
        raise WincrashError(detail) from None
    inner.path = path
    inner.kind = f"{what} {inner.kind}"
    if truncated:
        inner.notes.insert(0, f"the {compression} stream ends early (interrupted copy?): only its first part is "
                              "converted")
    return inner


def _open_libvirt_save(path: Path, fh: BinaryIO, size: int, head: bytes, scratch_dir: Path | None,
                       reopen: Callable[[Path, Path | None], PhysicalSource]) -> PhysicalSource:
    header = SaveHeader.parse(head[:HEADER_SIZE].ljust(HEADER_SIZE, b"\0"))
    start = header_length(os.pread(fh.fileno(), 8, HEADER_SIZE + header.data_len),
                          os.pread(fh.fileno(), 8, PADDED_HEADER_SIZE + header.data_len)) + header.data_len
    compression = COMPRESSION.get(header.compressed)
    partial = header.magic == PARTIAL_MAGIC
    if compression is None:
        fh.close()
        raise WincrashError(f"{path}: libvirt save image with unknown compression format {header.compressed}")
    if start >= size:
        fh.close()
        raise WincrashError(f"{path}: libvirt save image without a memory stream (truncated after its domain XML)")
    if compression != "raw":
        source = _open_compressed(path, fh, start, compression, f"libvirt save image ({compression}),", scratch_dir,
                                  reopen)
    else:
        source = _open_qevm_at(path, fh, start)
        source.kind = f"libvirt save image, {source.kind}"
    if partial:
        source.notes.insert(0, "libvirt had not finished writing this save image ('LibvirtQemudPart'): memory may "
                               "be missing")
    return source


def _open_qevm_at(path: Path, fh: BinaryIO, start: int) -> PhysicalSource:
    """The QEMU migration stream that starts at byte ``start`` (after libvirt's header and XML)."""
    from wincrash.memory.savevm import savevm_segments

    if os.pread(fh.fileno(), 4, start) != b"QEVM":
        fh.close()
        raise WincrashError(f"{path}: libvirt save image whose memory stream does not start with 'QEVM'")
    try:
        segments, nonzero = savevm_segments(path, fh, start)
    except WincrashError:
        fh.close()
        raise
    source = _source(path, fh, "qemu-savevm", segments, [], 0x8664)  # type: ignore[arg-type]
    if nonzero:
        source.notes.append(f"{nonzero} pages stored with a non-zero fill byte read as zeros")
    return source


def _open_lime(path: Path, fh: BinaryIO, size: int) -> PhysicalSource:
    """LiME (and what volatility3 stacks the same way): ranges stored plainly, read with LimeLayer's mapping."""
    from volatility3.framework.layers.lime import LimeLayer

    from wincrash.memory.vol3 import layer_mappings, plain_segments

    try:
        packed, _other = plain_segments(layer_mappings(path, LimeLayer))
    except WincrashError:
        fh.close()
        raise
    segments = [Segment(s.paddr, s.size, s.offset, max(0, min(s.size, size - s.offset))) for s in packed]
    missing = [(s.paddr + s.filesz, s.paddr + s.size) for s in segments if s.filesz < s.size]
    return _source(path, fh, "lime", segments, [], missing=missing)
