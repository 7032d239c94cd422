"""The KDBG encoding of Windows 8 and later (DESIGN §3), both ways.

Windows decodes each qword q with
    plain = bswap64(rol64(q ^ KiWaitNever, KiWaitNever & 0xFF) ^ &KdpDataBlockEncoded) ^ KiWaitAlways
so the generator stores the inverse. Kept independent of the converter's decoder on purpose.
"""

from __future__ import annotations

import struct

M64 = (1 << 64) - 1


def _rol(x: int, n: int) -> int:
    n &= 63
    return ((x << n) | (x >> (64 - n))) & M64 if n else x


def _ror(x: int, n: int) -> int:
    return _rol(x, 64 - (n & 63))


def _bswap(x: int) -> int:
    return int.from_bytes(x.to_bytes(8, "little"), "big")


def decode_qword(q: int, wait_never: int, wait_always: int, block_encoded_va: int) -> int:
    return _bswap(_rol(q ^ wait_never, wait_never & 0xFF) ^ block_encoded_va) ^ wait_always


def encode_qword(p: int, wait_never: int, wait_always: int, block_encoded_va: int) -> int:
    return _ror(_bswap(p ^ wait_always) ^ block_encoded_va, wait_never & 0xFF) ^ wait_never


def _apply(data: bytes, fn, *keys: int) -> bytes:
    if len(data) % 8:
        raise ValueError("the KDBG is encoded in whole qwords")
    words = struct.unpack(f"<{len(data) // 8}Q", data)
    return struct.pack(f"<{len(words)}Q", *(fn(w, *keys) for w in words))


def encode_block(plain: bytes, wait_never: int, wait_always: int, block_encoded_va: int) -> bytes:
    return _apply(plain, encode_qword, wait_never, wait_always, block_encoded_va)


def decode_block(encoded: bytes, wait_never: int, wait_always: int, block_encoded_va: int) -> bytes:
    return _apply(encoded, decode_qword, wait_never, wait_always, block_encoded_va)
