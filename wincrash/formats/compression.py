"""Whole-file compression formats libvirt uses for save and dump images (qemu.conf save_image_format,
dump_image_format: gzip, bzip2, xz, lzop, zstd), recognised by their magic numbers, and lzop's framing.

Magic numbers: gzip RFC 1952 (1f 8b), bzip2 ('BZh'), xz (fd '7zXZ' 00), zstd frame (28 b5 2f fd),
lzop (89 'LZO' 00 0d 0a 1a 0a; lzop 1.04 src/lzop.c for the header and block layout). Pure data.
"""

from __future__ import annotations

import struct

MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x89LZO\x00\r\n\x1a\n", "lzop"),
)
# The command that undoes each compression (what the engineer can run when we cannot).
UNDO = {"gzip": "zcat", "bzip2": "bzcat", "xz": "xzcat", "zstd": "zstdcat", "lzop": "lzop -dc"}


def compression_of(magic: bytes) -> str | None:
    """'gzip', 'bzip2', 'xz', 'zstd', 'lzop' or None, from the first bytes of a stream."""
    for signature, name in MAGICS:
        if magic.startswith(signature):
            return name
    return None


# lzop header flags (lzop.c F_*)
F_ADLER32_D = 0x1
F_ADLER32_C = 0x2
F_H_EXTRA_FIELD = 0x40
F_CRC32_D = 0x100
F_CRC32_C = 0x200
F_H_FILTER = 0x800
LZOP_MAGIC_SIZE = 9


def lzop_header_size(data: bytes) -> tuple[int, int]:
    """(bytes of the lzop file header incl. magic, its flags) from the file's first 512 bytes.

    Raises ValueError when the header is malformed or not complete in ``data``.
    """
    pos = LZOP_MAGIC_SIZE
    version, _lib, = struct.unpack_from(">HH", data, pos)
    pos += 4
    if version >= 0x0940:
        pos += 2  # version needed to extract
    pos += 1  # method
    if version >= 0x0940:
        pos += 1  # level
    (flags,) = struct.unpack_from(">I", data, pos)
    pos += 4
    if flags & F_H_FILTER:
        pos += 4
    pos += 8  # mode, mtime low
    if version >= 0x0940:
        pos += 4  # mtime high
    name_len = data[pos]
    pos += 1 + name_len + 4  # name, header checksum
    if flags & F_H_EXTRA_FIELD:
        (extra,) = struct.unpack_from(">I", data, pos)
        pos += 4 + extra + 4
    if pos > len(data):
        raise ValueError("lzop header runs past its first bytes")
    return pos, flags


def lzop_block_header_size(flags: int, src_len: int, dst_len: int) -> int:
    """Bytes after a block's (dst_len, src_len) pair before its data: the checksums ``flags`` ask for."""
    size = 4 if flags & (F_ADLER32_D | F_CRC32_D) else 0
    if src_len < dst_len and flags & (F_ADLER32_C | F_CRC32_C):
        size += 4
    return size
