"""What an input crash dump's own header says about the crash: the context a DMP given as input keeps.

A DMP converted again (full -> bitmap, a repair, a kernel dump re-cut) must keep the crash it records:
its DirectoryTableBase and KdDebuggerDataBlock (where analysis starts looking), its NumberProcessors,
its bugcheck and its ContextRecord (the crashing processor's registers). memory/dmp.py builds a
`DumpHeaderFacts` from dmp/reader.py's DmpFile; the PhysicalSource carries it to windows/ (locate)
and dmp/plan.py (the new header). Layout: DUMP_HEADER64 (formats/dump.py, DESIGN §3).
"""

from __future__ import annotations

from dataclasses import dataclass

from wincrash.dmp.reader import BITMAP_TYPES, DmpFile, is_page_pattern
from wincrash.formats.context import CONTEXT_AMD64, CONTEXT_AMD64_SIZE
from wincrash.formats.dump import BITMAP_KERNEL_SIGNATURE, DUMP_TYPE_NAMES, DumpType

MAX_PROCESSORS = 4096  # more than any Windows x64 build supports: a larger NumberProcessors is not one


@dataclass(frozen=True)
class DumpHeaderFacts:
    """The crash context of an input DMP's DUMP_HEADER64, each value None where the header never set it
    (Windows' 'PAGE' fill) or holds something no Windows header does.

    ``directory_table_base``: physical address (bytes) of the PML4 the header names; ``kd_debugger_data_block``:
    virtual address of KDDEBUGGER_DATA64; ``bugcheck_parameters`` the four 64-bit parameters;
    ``context`` the 0x4D0-byte CONTEXT_AMD64 of ContextRecord (None unless ContextFlags has
    CONTEXT_AMD64); ``kernel_only`` is True for a kernel memory dump (bitmap 'SDMP'), whose absent
    pages are not zeros but pages Windows left out; ``kind`` names the dump for messages.
    """

    dump_type: int
    kind: str
    kernel_only: bool
    directory_table_base: int | None
    kd_debugger_data_block: int | None
    number_processors: int | None
    bugcheck_code: int | None
    bugcheck_parameters: tuple[int, int, int, int]
    context: bytes | None

    @property
    def context_rip(self) -> int:
        """The header context's RIP (CONTEXT_AMD64 offset 0xF8), 0 when there is no context."""
        return int.from_bytes(self.context[0xF8:0x100], "little") if self.context else 0


def header_facts(dmp: DmpFile) -> DumpHeaderFacts:
    """The crash context of a 64-bit dump's header (``dmp`` from dmp.reader.read_dmp); never raises."""
    h = dmp.header
    kernel_only = dmp.dump_type in BITMAP_TYPES and dmp.bitmap is not None and \
        dmp.bitmap.signature == BITMAP_KERNEL_SIGNATURE
    kind = "kernel memory dump (bitmap, 'SDMP')" if kernel_only else \
        f"{DUMP_TYPE_NAMES.get(dmp.dump_type, f'type {dmp.dump_type}')} DMP"
    if dmp.dump_type == DumpType.BITMAP and not kernel_only:
        kind = "complete memory dump (bitmap, 'FDMP')"

    def value(raw: int) -> int | None:
        return None if raw == 0 or is_page_pattern(raw) else raw

    dtb = value(h.DirectoryTableBase)
    processors = h.NumberProcessors if 0 < h.NumberProcessors <= MAX_PROCESSORS else None
    code = None if is_page_pattern(h.BugCheckCode, 4) else h.BugCheckCode
    params = tuple(0 if is_page_pattern(p) else p for p in h.BugCheckParameter)
    raw_context = bytes(h.ContextRecordBuffer[:CONTEXT_AMD64_SIZE])
    flags = int.from_bytes(raw_context[0x30:0x34], "little")  # CONTEXT_AMD64.ContextFlags
    context = raw_context if flags & CONTEXT_AMD64 and not is_page_pattern(flags, 4) else None
    return DumpHeaderFacts(dmp.dump_type, kind, kernel_only, dtb if dtb is None else dtb & ~0xFFF,
                           value(h.KdDebuggerDataBlock), processors, code, params, context)  # type: ignore[arg-type]
