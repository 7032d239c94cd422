"""An existing 64-bit full or bitmap crash dump (MEMORY.DMP) as a memory source, to re-write or repair it.

The reading itself is wincrash.dmp.reader's and .pagemap's (one DMP reader for info, grab-pagefile and this);
here its PFN -> file offset page map becomes guest-physical segments.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import BinaryIO

from wincrash.dmp.pagemap import page_map
from wincrash.dmp.reader import read_dmp
from wincrash.errors import WincrashError
from wincrash.formats.dump import DUMP_SIGNATURE64, PAGE_SIZE, MachineType
from wincrash.memory.dump_header import header_facts
from wincrash.memory.segments import MemoryMap, PackedSegments


class Dmp:
    """Container format: a 64-bit Microsoft crash dump ('PAGEDU64') of DumpType 1 (full) or 5/6 (bitmap)."""

    kind = "dmp"

    @staticmethod
    def detect(head: bytes, size: int) -> bool:
        """'PAGEDU64' at offset 0 (32-bit 'PAGEDUMP' dumps are not convertible)."""
        return head[:8] == DUMP_SIGNATURE64

    @staticmethod
    def map(path: Path, fh: BinaryIO, size: int) -> MemoryMap:
        """The dump's pages as segments and its header's crash context (memory.dump_header); WincrashError
        (prefixed with ``path``) for a corrupt or other dump."""
        try:
            dmp = read_dmp(fh, size)
            pages = page_map(fh, dmp)
        except WincrashError as exc:
            raise WincrashError(f"{path}: {exc}") from None
        pfn, counts, offsets, missing = pages.pfn, pages.pages, pages.offset, pages.missing
        del pages  # the page-number arrays go as soon as their byte-address copies exist (peak memory)
        paddr = array("Q", map(PAGE_SIZE.__mul__, pfn))
        del pfn
        sizes = array("Q", map(PAGE_SIZE.__mul__, counts))
        del counts
        segments = PackedSegments.from_arrays(paddr, sizes, offsets, size)
        return MemoryMap(Dmp.kind, segments, (), int(MachineType.AMD64), missing, dump_header=header_facts(dmp))
