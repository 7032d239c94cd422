"""Find and decode KDDEBUGGER_DATA64 inside ntoskrnl without the PDB.

Windows 8+ store the block encoded, per qword q:
    plain = bswap64(rol64(q ^ KiWaitNever, KiWaitNever & 0xFF) ^ &KdpDataBlockEncoded) ^ KiWaitAlways
Because rol distributes over xor, this is plain = bswap64(rol64(q, r)) ^ C with r = KiWaitNever & 63
and a single constant C. The block's own known plaintext (KernBase, which we know from the PE image,
and the 'KDBG' OwnerTag next to a plausible Size) fixes r and C: 64 trials per candidate position.
Candidates are the positions where the encoded Flink equals the encoded Blink (a one-entry list,
as it is in a live system), so the scan of ntoskrnl's data costs milliseconds.

find_kdbg() is the locate stage: it searches ntoskrnl's writable data sections through a KernelView
and returns a KdbgBlock with the fields later stages use, typed and named as in wdbgexts.h.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wincrash.errors import WincrashError
from wincrash.formats.kdbg import KDDEBUGGER_DATA64
from wincrash.windows.kernel import KernelView

KDBG_TAG = int.from_bytes(b"KDBG", "little")
MASK64 = (1 << 64) - 1
KDBG_MIN_SIZE, KDBG_MAX_SIZE = 0x300, 0x800
KERNBASE_OFFSET = 0x18


def rol64(value: int, count: int) -> int:
    """Rotate a 64-bit value left by ``count`` (mod 64) bits."""
    count &= 63
    return ((value << count) | (value >> (64 - count))) & MASK64 if count else value


def bswap64(value: int) -> int:
    """Reverse the byte order of a 64-bit value."""
    return int.from_bytes(value.to_bytes(8, "little"), "big")


def decode_qword(q: int, r: int, c: int) -> int:
    """One plain qword from encoded ``q``, rotation ``r`` and constant ``c`` (see the module docstring)."""
    return bswap64(rol64(q, r)) ^ c


def decode_block(data: bytes, r: int, c: int) -> bytes:
    """Decode a whole encoded block (a multiple of 8 bytes)."""
    qwords = struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8])
    return struct.pack(f"<{len(qwords)}Q", *(decode_qword(q, r, c) for q in qwords))


@dataclass(frozen=True)
class KdbgMatch:
    """Where the KDBG is (virtual ``va``) and its plain bytes; ``rotate``/``constant`` solved when encoded."""

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


@dataclass(frozen=True)
class KdbgBlock:
    """The KDDEBUGGER_DATA64 found in ntoskrnl, decoded, with the fields wincrash uses.

    Address fields are kernel virtual addresses of variables (KiBugcheckData, KiProcessorBlock, ...),
    as the block holds them (wdbgexts.h); ``offset_prcb_*`` are byte offsets inside a KPRCB (0 when
    the block does not give them). ``pa`` is the block's physical address (None when its page is not
    mapped); ``plain`` the decoded bytes (Header.Size of them) that a dump must carry in place of the
    encoded ones; ``method`` says how it was found.
    """

    va: int
    pa: int | None
    plain: bytes
    encoded: bool
    method: str
    ki_bugcheck_data: int
    nt_build_lab: int
    mm_physical_memory_block: int
    ki_processor_block: int
    ps_active_process_head: int
    ps_loaded_module_list: int
    mm_pfn_database: int
    offset_prcb_context: int
    offset_prcb_proc_state_context: int


def find_kdbg(kernel: KernelView, hint: int | None = None) -> KdbgBlock:
    """The KDBG inside ntoskrnl's writable data sections (all sections when none is marked writable).

    ``hint``: a virtual address where the block should be (a DMP input's header KdDebuggerDataBlock),
    taken when a plausible block (plain or encoded) starts there, before any search.
    Raises WincrashError("no Windows kernel debugger data (KDBG) found: ...") listing every attempt
    of the kernel search and this one.
    """
    image = kernel.image
    end = image.base + image.size_of_image
    tried_hint: tuple[str, ...] = ()
    if hint is not None:
        match = None
        if image.base <= hint < end:
            match = find_in_data(kernel.read_image_range(hint, KDBG_MAX_SIZE), hint, image.base, end)
        if match is not None and match.va == hint:
            method = f"{'encoded' if match.encoded else 'plain'} block at the input dump header's KdDebuggerDataBlock"
            return _block(match, kernel.space.translate(hint), method)
        tried_hint = (f"no KDBG at the input dump header's KdDebuggerDataBlock 0x{hint:x}",)
    sections = [s for s in image.sections if s.writable_data] or image.sections
    for section in sections:
        data = kernel.read_image_range(image.base + section.rva, section.size)
        match = find_in_data(data, image.base + section.rva, image.base, end)
        if match:
            method = (f"{'encoded' if match.encoded else 'plain'} block in section {section.name} "
                      + ("decoded with keys solved from known plaintext" if match.encoded else ""))
            return _block(match, kernel.space.translate(match.va), method)
    tried = (*kernel.tried, *tried_hint,
             f"ntoskrnl found at 0x{image.base:x} but no valid KDBG (plain or encoded) in its data sections")
    raise WincrashError("no Windows kernel debugger data (KDBG) found: " + "; ".join(tried))


def _block(match: KdbgMatch, pa: int | None, method: str) -> KdbgBlock:
    """Parse the plain block (zero-padded to the full 0x380-byte layout: shorter blocks leave later fields 0)."""
    k = KDDEBUGGER_DATA64.parse(match.plain.ljust(KDDEBUGGER_DATA64.sizeof(), b"\0"))
    return KdbgBlock(
        va=match.va, pa=pa, plain=match.plain, encoded=match.encoded, method=method,
        ki_bugcheck_data=k.KiBugcheckData, nt_build_lab=k.NtBuildLab, mm_physical_memory_block=k.MmPhysicalMemoryBlock,
        ki_processor_block=k.KiProcessorBlock, ps_active_process_head=k.PsActiveProcessHead,
        ps_loaded_module_list=k.PsLoadedModuleList, mm_pfn_database=k.MmPfnDatabase,
        offset_prcb_context=k.OffsetPrcbContext, offset_prcb_proc_state_context=k.OffsetPrcbProcStateContext,
    )
