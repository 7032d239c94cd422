"""kdump-compressed dumps (plain 'KDUMP   ' and makedumpfile's flattened form) as a memory source.

Why our own reader and not libkdumpfile (evaluated: Debian 12 python3-libkdumpfile 0.5.1 on QEMU
7.2's `dump-guest-memory format=kdump-zlib` of the test guest): 0.5.1 does not open the flattened
form at all ("Unknown file format"; flattened support came in libkdumpfile 0.5.3, and QEMU < 8.2
writes only that form), and it gives no access to the note area, where QEMU keeps the vCPU registers
('QEMU' QEMUCPUState notes) that convert uses for the DTB, the IDT and the processor contexts. Its
page reads (1 MiB at a time, KDUMP_MACHPHYSADDR) ran at ~300 MiB/s, no faster than zlib here. The
format is small (wincrash.formats.kdump), so one reader serves both forms; the tests check its pages
against libkdumpfile's on the plain form.

kdump pages are compressed one by one, so they cannot be copied kernel-side: they are decoded once
into a sparse scratch file (wincrash.memory.scratch) laid out as a raw image (file offset =
guest-physical address, zero pages as holes), which then serves as an ordinary raw source.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from construct import Container

from wincrash.errors import WincrashError
from wincrash.formats.elf import QEMU_CPUSTATE_SIZE, QEMU_NOTE_TYPE, QEMUCPUState
from wincrash.formats.kdump import (
    COMPRESSED_LZO,
    COMPRESSED_SNAPPY,
    COMPRESSED_ZLIB,
    COMPRESSED_ZSTD,
    COMPRESSION_NAMES,
    DISK_DUMP_HEADER_SIZE,
    FLAT_SIGNATURE,
    KDUMP_SIGNATURE,
    KDUMP_SUB_HEADER_SIZE,
    PAGE_DESC_FORMAT,
    PAGE_DESC_SIZE,
    DiskDumpHeader64,
    KdumpSubHeader64,
)
from wincrash.memory.flattened import FlatReader, PlainReader
from wincrash.memory.qemu_elf import Segment, iter_notes
from wincrash.memory.scratch import pwrite_all, scratch_file
from wincrash.progress import byte_progress

PAGE = 0x1000
MAX_NOTES = 64 << 20
READ_WINDOW = 8 << 20
WRITE_BATCH = 4 << 20
ZERO_PAGE = bytes(PAGE)
Reader = PlainReader | FlatReader


@dataclass(frozen=True)
class KdumpLayout:
    """What the headers say: ``form`` is 'plain' or 'flattened'; sizes in bytes; pfns are 4 KiB pages."""

    form: str
    header: Container
    sub: Container
    runs: tuple[tuple[int, int], ...]  # (first pfn, page count) of dumped pages, from the second bitmap
    desc_offset: int  # where the page descriptors start in the kdump file
    cpus: tuple[Container, ...]  # QEMUCPUState of every vCPU, from the note area
    truncated: bool

    @property
    def pages(self) -> int:
        return sum(n for _, n in self.runs)


def is_kdump(magic: bytes) -> bool:
    """True for a 'KDUMP   ' file or a flattened makedumpfile stream (``magic``: the first 16 bytes)."""
    return magic.startswith(KDUMP_SIGNATURE) or magic.startswith(FLAT_SIGNATURE)


def open_reader(fh: BinaryIO, size: int) -> tuple[str, Reader]:
    """('plain' or 'flattened', a reader of the 'KDUMP   ' bytes)."""
    fd = fh.fileno()
    if os.pread(fd, len(FLAT_SIGNATURE), 0) == FLAT_SIGNATURE:
        return "flattened", FlatReader(fd, size)
    return "plain", PlainReader(fd, size)


def read_layout(fh: BinaryIO, size: int) -> tuple[KdumpLayout, Reader]:
    """Parse headers, the dumped-page bitmap and the notes; raise WincrashError when malformed."""
    form, reader = open_reader(fh, size)
    raw = reader.read(0, DISK_DUMP_HEADER_SIZE)
    if len(raw) < DISK_DUMP_HEADER_SIZE or not raw.startswith(KDUMP_SIGNATURE):
        raise WincrashError(f"kdump ({form}): the disk_dump_header is missing or truncated")
    header = DiskDumpHeader64.parse(raw)
    bs = header.block_size
    if bs != PAGE:
        raise WincrashError(f"kdump with block size {bs}: only 4096-byte pages (x86_64) are supported")
    if header.header_version < 4:
        raise WincrashError(f"kdump header version {header.header_version}: too old to hold vCPU notes")
    sub = KdumpSubHeader64.parse(reader.read(bs, KDUMP_SUB_HEADER_SIZE).ljust(KDUMP_SUB_HEADER_SIZE, b"\0"))
    half = header.bitmap_blocks // 2 * bs
    bitmap_at = (1 + header.sub_hdr_size) * bs
    max_pfn = sub.max_mapnr_64 if header.header_version >= 6 and sub.max_mapnr_64 else header.max_mapnr
    dumped = reader.read(bitmap_at + half, half)
    if len(dumped) < half:
        raise WincrashError(f"kdump ({form}) is truncated inside its page bitmaps: take or copy the dump again")
    runs = tuple(_bit_runs(dumped, max_pfn))
    notes = reader.read(sub.offset_note, min(sub.size_note, MAX_NOTES)) if sub.size_note else b""
    layout = KdumpLayout(form, header, sub, runs, bitmap_at + 2 * half, tuple(qemu_cpu_notes(notes)),
                         getattr(reader, "truncated", False))
    return layout, reader


def _bit_runs(bitmap: bytes, limit: int) -> Iterator[tuple[int, int]]:
    """(first bit, count) of every run of set bits (little-endian bit order), below ``limit``.

    Linear in the bitmap's size whatever its pattern (stretches of zero bytes are skipped by a regex,
    each other byte is decoded from a table), and never larger than the bitmap whatever ``limit`` says.
    """
    limit = min(limit, len(bitmap) * 8)
    start = count = 0
    for match in _NONZERO.finditer(bitmap, 0, (limit + 7) // 8):
        for i, byte in enumerate(match.group(), match.start()):
            for first, n in _BYTE_RUNS[byte]:
                bit = i * 8 + first
                if bit >= limit:
                    break
                n = min(n, limit - bit)
                if count and start + count == bit:
                    count += n
                else:
                    if count:
                        yield start, count
                    start, count = bit, n
    if count:
        yield start, count


_NONZERO = re.compile(rb"[^\x00]+")
# For each byte value, its runs of set bits as (first bit, length), LSB first.
_BYTE_RUNS = tuple(tuple((m.start(), m.end() - m.start()) for m in re.finditer("1+", format(v, "08b")[::-1]))
                   for v in range(256))


def qemu_cpu_notes(data: bytes) -> Iterator[Container]:
    """QEMUCPUState of every 'QEMU' note in an ELF note area (what QEMU stores in kdump's note area)."""
    for _pos, name, note_type, desc in iter_notes(data):
        if name == b"QEMU" and note_type == QEMU_NOTE_TYPE and len(desc) >= QEMU_CPUSTATE_SIZE:
            yield QEMUCPUState.parse(desc)


def _decompressor(flags: int) -> Callable[[bytes], bytes]:
    if flags & COMPRESSED_ZLIB:
        return zlib.decompress
    try:
        if flags & COMPRESSED_LZO:
            import lzallright

            lzo = lzallright.LZOCompressor()
            return lambda data: lzo.decompress(data, PAGE)
        if flags & COMPRESSED_SNAPPY:
            import cramjam

            return lambda data: bytes(cramjam.snappy.decompress_raw(data))
        if flags & COMPRESSED_ZSTD:
            import zstandard

            zstd = zstandard.ZstdDecompressor()
            return lambda data: zstd.decompress(data, max_output_size=PAGE)
    except ImportError as exc:
        raise WincrashError(f"kdump pages compressed with {COMPRESSION_NAMES.get(flags & 0x27, hex(flags))} need the "
                            f"Python package {exc.name} (pip install it)") from None
    raise WincrashError(f"kdump page with unknown compression flags 0x{flags:x}")


@dataclass(frozen=True)
class Decoded:
    """The scratch raw image: ``fh`` (file offset = guest-physical address), what was there and not."""

    fh: BinaryIO
    segments: list[Segment]
    missing: list[tuple[int, int]]  # guest-physical [start, end) the input did not hold (truncated)
    compression: str
    data_pages: int  # non-zero pages written


def decode(layout: KdumpLayout, reader: Reader, scratch_dir: Path | None, progress: bool = True) -> Decoded:
    """Decompress every dumped page into a sparse scratch raw image (zero pages stay holes)."""
    descs = reader.read(layout.desc_offset, layout.pages * PAGE_DESC_SIZE)
    complete = len(descs) // PAGE_DESC_SIZE
    offsets = [d[0] for d in struct.iter_unpack(PAGE_DESC_FORMAT, descs[:complete * PAGE_DESC_SIZE])]
    zero_at = _zero_page_offset(reader, descs[:complete * PAGE_DESC_SIZE])
    needed = sum(1 for o in offsets if o != zero_at) * PAGE
    out = scratch_file(scratch_dir, needed)
    try:
        return _decode_into(layout, reader, descs, zero_at, out, scratch_dir, progress)
    except BaseException:
        out.close()
        raise


def _zero_page_offset(reader: Reader, descs: bytes) -> int | None:
    """The data offset QEMU/makedumpfile point every all-zero page at (the lowest one), if it holds zeros."""
    best = None
    for offset, size, flags, _ in struct.iter_unpack(PAGE_DESC_FORMAT, descs):
        if best is None or offset < best[0]:
            best = (offset, size, flags)
    if best is None:
        return None
    data = reader.read(best[0], best[1])
    try:
        page = data if best[2] == 0 else _decompressor(best[2])(data)
    except Exception:  # noqa: BLE001 - a bad page is not the zero page
        return None
    return best[0] if page == ZERO_PAGE else None


def _decode_into(layout: KdumpLayout, reader: Reader, descs: bytes, zero_at: int | None, out: BinaryIO,
                 scratch_dir: Path | None, progress: bool) -> Decoded:
    fd = out.fileno()
    window, window_at = b"", 0
    batch, batch_at = bytearray(), 0
    missing: list[tuple[int, int]] = []
    decoders: dict[int, Callable[[bytes], bytes]] = {}
    compressions: set[str] = set()
    written = 0
    index = 0
    total = layout.pages * PAGE
    with byte_progress("decompressing kdump pages", total, progress) as advance:
        for first, count in layout.runs:
            for pfn in range(first, first + count):
                page = None
                if (index + 1) * PAGE_DESC_SIZE <= len(descs):
                    offset, size, flags, _ = struct.unpack_from(PAGE_DESC_FORMAT, descs, index * PAGE_DESC_SIZE)
                    if offset == zero_at:
                        page = ZERO_PAGE
                    else:
                        if not window_at <= offset or offset + size > window_at + len(window):
                            window, window_at = reader.read(offset, max(READ_WINDOW, size)), offset
                        data = window[offset - window_at:offset - window_at + size]
                        if len(data) == size and size <= 2 * PAGE:
                            page = _page(data, flags, decoders, compressions)
                index += 1
                if page is None:
                    _add_missing(missing, pfn)
                elif page != ZERO_PAGE:
                    if batch and (batch_at + len(batch) != pfn * PAGE or len(batch) >= WRITE_BATCH):
                        pwrite_all(fd, batch, batch_at, scratch_dir)
                        batch = bytearray()
                    if not batch:
                        batch_at = pfn * PAGE
                    batch += page
                    written += 1
                if index % 256 == 0:
                    advance(256 * PAGE)
        if batch:
            pwrite_all(fd, batch, batch_at, scratch_dir)
    segments = [Segment(p * PAGE, n * PAGE, p * PAGE, n * PAGE) for p, n in layout.runs]
    end = max((s.paddr + s.size for s in segments), default=0)
    out.truncate(end)
    return Decoded(out, segments, missing, "+".join(sorted(compressions)) or "none", written)


def _page(data: bytes, flags: int, decoders: dict[int, Callable[[bytes], bytes]],
          compressions: set[str]) -> bytes | None:
    """One decoded page, or None when its data does not decode to a page (a damaged dump)."""
    if flags == 0:
        return data if len(data) == PAGE else None
    decoder = decoders.get(flags)
    if decoder is None:
        decoder = decoders[flags] = _decompressor(flags)
        compressions.add(COMPRESSION_NAMES.get(flags & (COMPRESSED_ZLIB | COMPRESSED_LZO | COMPRESSED_SNAPPY
                                                        | COMPRESSED_ZSTD), hex(flags)))
    try:
        page = decoder(data)
    except Exception:  # noqa: BLE001 - zlib.error, lzo and snappy errors: the page is damaged
        return None
    return page if len(page) == PAGE else None


def _add_missing(missing: list[tuple[int, int]], pfn: int) -> None:
    if missing and missing[-1][1] == pfn * PAGE:
        missing[-1] = (missing[-1][0], (pfn + 1) * PAGE)
    else:
        missing.append((pfn * PAGE, (pfn + 1) * PAGE))
