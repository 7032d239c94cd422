"""Compressed memory files (libvirt's save_image_format / dump_image_format) decoded into a scratch file.

A compressed stream cannot be mapped, so it is decompressed once (stdlib gzip/bz2/lzma, the PyPI
packages zstandard and lzallright for zstd and lzop) into an unnamed sparse scratch file next to the
output (wincrash.memory.scratch; all-zero MiB blocks stay holes), which is then opened like any
input. Compressed bytes are never scanned as memory.
"""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from wincrash.errors import WincrashError
from wincrash.formats.compression import UNDO, lzop_block_header_size, lzop_header_size
from wincrash.memory.scratch import MARGIN, pwrite_all, scratch_file
from wincrash.output import check_free_space
from wincrash.progress import byte_progress

CHUNK = 1 << 20
SPACE_CHECK_EVERY = 256 << 20


def _read_from(fd: int, start: int) -> Iterator[bytes]:
    pos = start
    while True:
        data = os.pread(fd, CHUNK, pos)
        if not data:
            return
        pos += len(data)
        yield data


def _stdlib(make: Callable[[], object]) -> Callable[[Iterator[bytes]], Iterator[bytes]]:
    def run(chunks: Iterator[bytes]) -> Iterator[bytes]:
        dec = make()
        for data in chunks:
            while data:
                yield dec.decompress(data, CHUNK)  # type: ignore[attr-defined]
                data = b""
                while not dec.needs_input and not dec.eof:  # type: ignore[attr-defined]
                    yield dec.decompress(b"", CHUNK)  # type: ignore[attr-defined]
                if dec.eof and dec.unused_data:  # type: ignore[attr-defined]  # a next stream (cat a.xz b.xz)
                    data = dec.unused_data  # type: ignore[attr-defined]
                    dec = make()
        if not dec.eof:  # type: ignore[attr-defined]
            raise EOFError("the compressed stream ends early")
    return run


def _gzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
    for data in chunks:
        while data:
            yield dec.decompress(data, CHUNK)
            data = dec.unconsumed_tail
            if dec.eof and (dec.unused_data or data):  # a next gzip member (pigz, cat a.gz b.gz)
                data = dec.unused_data + data
                dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
    tail = dec.flush()  # output zlib held back when the last input ended at a max_length boundary
    if tail:
        yield tail
    if not dec.eof:
        raise EOFError("the compressed stream ends early")


def _zstd(chunks: Iterator[bytes]) -> Iterator[bytes]:
    import zstandard

    dec = zstandard.ZstdDecompressor().decompressobj()
    for data in chunks:
        yield dec.decompress(data)
    if not dec.eof:
        raise EOFError("the compressed stream ends early")


def _lzop(chunks: Iterator[bytes]) -> Iterator[bytes]:
    import lzallright

    lzo = lzallright.LZOCompressor()
    buf = b""
    it = iter(chunks)
    for data in it:
        buf += data
        if len(buf) >= 512:
            break
    pos, flags = lzop_header_size(buf[:512])
    while True:
        while len(buf) - pos < 8 and (data := next(it, None)) is not None:
            buf = buf[pos:] + data
            pos = 0
        if len(buf) - pos < 4:
            raise EOFError("the lzop stream ends early")
        (dst_len,) = struct.unpack_from(">I", buf, pos)
        if dst_len == 0:
            return
        (src_len,) = struct.unpack_from(">I", buf, pos + 4)
        body = pos + 8 + lzop_block_header_size(flags, src_len, dst_len)
        while len(buf) < body + src_len and (data := next(it, None)) is not None:
            buf = buf[pos:] + data
            body -= pos
            pos = 0
        block = buf[body:body + src_len]
        if len(block) < src_len:
            raise EOFError("the lzop stream ends early")
        yield block if src_len == dst_len else lzo.decompress(block, dst_len)
        pos = body + src_len


DECODERS: dict[str, Callable[[Iterator[bytes]], Iterator[bytes]]] = {
    "gzip": _gzip,
    "bzip2": _stdlib(bz2.BZ2Decompressor),
    "xz": _stdlib(lzma.LZMADecompressor),
    "zstd": _zstd,
    "lzop": _lzop,
}


def decompress_to_scratch(path: Path, fh: BinaryIO, start: int, compression: str, scratch_dir: Path | None,
                          progress: bool = True) -> tuple[BinaryIO, bool]:
    """(scratch file holding the decompressed bytes of ``fh`` from ``start`` on, True if the stream ended early).

    Free space is checked first against the compressed size and again every 256 MiB written; an
    unknown compressor package or a damaged stream is one WincrashError naming the command to run.
    """
    size = os.fstat(fh.fileno()).st_size - start
    out = scratch_file(scratch_dir, size)
    where = scratch_dir
    written = pos = 0
    truncated = False
    undo = f"`{UNDO[compression]} {path} > {path.name}.raw` and convert that"
    try:
        with byte_progress(f"decompressing {compression}", None, progress) as advance:
            try:
                for data in DECODERS[compression](_read_from(fh.fileno(), start)):
                    if data.count(0) != len(data):
                        pwrite_all(out.fileno(), data, pos, where)
                    pos += len(data)
                    advance(len(data))
                    if pos - written >= SPACE_CHECK_EVERY:
                        check_free_space((where or Path(out.name).parent) / "scratch", SPACE_CHECK_EVERY + MARGIN)
                        written = pos
            except ImportError as exc:
                raise WincrashError(f"{path}: {compression}-compressed: decompressing it needs the Python package "
                                    f"{exc.name}; or run {undo}") from None
            except WincrashError:
                raise
            except Exception as exc:  # noqa: BLE001 - zlib.error, lzma.LZMAError, EOFError, ZstdError, LZOError
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise
                if pos == 0:
                    raise WincrashError(f"{path}: damaged {compression} stream ({exc}); try {undo}") from None
                truncated = True  # what came before the damage or the cut is kept
        out.truncate(pos)
    except BaseException:
        out.close()
        raise
    if pos == 0:
        out.close()
        raise WincrashError(f"{path}: the {compression} stream holds nothing")
    return out, truncated
