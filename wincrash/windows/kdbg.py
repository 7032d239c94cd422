"""Find and decode KDDEBUGGER_DATA64 inside ntoskrnl without the PDB.

Windows 8+ store the block encoded, per qword q:
    plain = bswap64(rol64(q ^ KiWaitNever, KiWaitNever & 0xFF) ^ &KdpDataBlockEncoded) ^ KiWaitAlways
Because rol distributes over xor, this is plain = bswap64(rol64(q, r)) ^ C with r = KiWaitNever & 63
and a single constant C. The block's own known plaintext (KernBase, which we know from the PE image,
and the 'KDBG' OwnerTag next to a plausible Size) fixes r and C: 64 trials per candidate position.
Candidates are the positions where the encoded Flink equals the encoded Blink (a one-entry list,
as it is in a live system), so the scan of ntoskrnl's data costs milliseconds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

KDBG_TAG = int.from_bytes(b"KDBG", "little")
MASK64 = (1 << 64) - 1
KDBG_MIN_SIZE, KDBG_MAX_SIZE = 0x300, 0x800
KERNBASE_OFFSET = 0x18


def rol64(value: int, count: int) -> int:
    count &= 63
    return ((value << count) | (value >> (64 - count))) & MASK64 if count else value


def bswap64(value: int) -> int:
    return int.from_bytes(value.to_bytes(8, "little"), "big")


def decode_qword(q: int, r: int, c: int) -> int:
    return bswap64(rol64(q, r)) ^ c


def decode_block(data: bytes, r: int, c: int) -> bytes:
    """Decode a whole encoded block (a multiple of 8 bytes)."""
    qwords = struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8])
    return struct.pack(f"<{len(qwords)}Q", *(decode_qword(q, r, c) for q in qwords))


@dataclass
class KdbgMatch:
    """Where the KDBG is and its plain bytes."""

    va: int
    plain: bytes  # the decoded (or already plain) block, Header.Size bytes
    encoded: bool
    rotate: int = 0
    constant: int = 0


def _plausible(plain: bytes, kern_base: int, image_end: int) -> bool:
    tag, size = struct.unpack_from("<II", plain, 0x10)
    if tag != KDBG_TAG or not KDBG_MIN_SIZE <= size <= KDBG_MAX_SIZE or size % 8:
        return False
    flink, blink = struct.unpack_from("<QQ", plain, 0)
    base = struct.unpack_from("<Q", plain, KERNBASE_OFFSET)[0]
    if base != kern_base or flink != blink:
        return False
    # PsLoadedModuleList (0x48) and KiBugcheckData (0x88) are variables inside ntoskrnl.
    for off in (0x48, 0x88):
        value = struct.unpack_from("<Q", plain, off)[0]
        if not kern_base <= value < image_end:
            return False
    return True


def find_in_data(data: bytes, data_va: int, kern_base: int, image_end: int) -> KdbgMatch | None:
    """Search one section's bytes (``data`` mapped at ``data_va``) for a plain or encoded KDBG."""
    # Plain (Windows 7, or a block already decoded): the 'KDBG' tag at +0x10 of a qword-aligned block.
    pos = data.find(b"KDBG")
    while pos != -1:
        start = pos - 0x10
        if start >= 0 and start % 8 == 0 and start + 0x340 <= len(data):
            size = struct.unpack_from("<I", data, start + 0x14)[0]
            block = data[start:start + min(size, len(data) - start)]
            if len(block) >= KDBG_MIN_SIZE and _plausible(block, kern_base, image_end):
                return KdbgMatch(data_va + start, block, encoded=False)
        pos = data.find(b"KDBG", pos + 1)
    # Encoded: Flink == Blink (encoded identically), then solve r and C from KernBase and the tag.
    count = len(data) // 8
    qwords = struct.unpack(f"<{count}Q", data[: count * 8])
    for i in range(count - 4):
        q0 = qwords[i]
        if q0 == 0 or q0 != qwords[i + 1] or qwords[i + 2] == q0:
            continue
        q_tag, q_base = qwords[i + 2], qwords[i + 3]
        for r in range(64):
            c = bswap64(rol64(q_base, r)) ^ kern_base
            tag_size = decode_qword(q_tag, r, c)
            if tag_size & 0xFFFFFFFF != KDBG_TAG:
                continue
            size = tag_size >> 32
            if not KDBG_MIN_SIZE <= size <= KDBG_MAX_SIZE or i * 8 + size > len(data):
                continue
            plain = decode_block(data[i * 8:i * 8 + size], r, c)
            if _plausible(plain, kern_base, image_end):
                return KdbgMatch(data_va + i * 8, plain, encoded=True, rotate=r, constant=c)
    return None
