"""x64 4-level address translation over a physical memory source (no symbols needed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

PFN_MASK = 0x000F_FFFF_FFFF_F000
PRESENT = 1
LARGE = 1 << 7
KUSER_SHARED_DATA_VA = 0xFFFFF78000000000


def cr3_base(cr3: int) -> int:
    """The PML4's physical address: CR3 without PCID bits (0-11) and the no-flush bit (63)."""
    return cr3 & PFN_MASK


def canonical(va: int) -> int:
    """Sign-extend a 48-bit virtual address."""
    va &= 0xFFFF_FFFF_FFFF
    return va | 0xFFFF_0000_0000_0000 if va & (1 << 47) else va


class TooManyMappings(Exception):  # noqa: N818 - a signal to the caller, not an error the user sees
    """A walk met more mappings than its limit: the tables map more than the input holds (not a real kernel's)."""


class AddressSpace:
    """Translate kernel virtual addresses through one DTB; caches page-table reads."""

    def __init__(self, read: Callable[[int, int], bytes], dtb: int) -> None:
        self._read = read
        self.dtb = cr3_base(dtb)
        self._tables: dict[int, bytes] = {}

    def _entry(self, table: int, index: int) -> int:
        page = self._tables.get(table)
        if page is None:
            page = self._read(table, 0x1000)
            if len(self._tables) > 4096:
                self._tables.clear()
            self._tables[table] = page
        return int.from_bytes(page[index * 8:index * 8 + 8], "little")

    def translate(self, va: int) -> int | None:
        """Physical address of ``va``, or None when it is not mapped (transition/paged-out: None too)."""
        e = self._entry(self.dtb, (va >> 39) & 0x1FF)
        if not e & PRESENT:
            return None
        e = self._entry(e & PFN_MASK, (va >> 30) & 0x1FF)
        if not e & PRESENT:
            return None
        if e & LARGE:
            return (e & 0x000F_FFFF_C000_0000) | (va & 0x3FFF_FFFF)
        e = self._entry(e & PFN_MASK, (va >> 21) & 0x1FF)
        if not e & PRESENT:
            return None
        if e & LARGE:
            return (e & 0x000F_FFFF_FFE0_0000) | (va & 0x1F_FFFF)
        e = self._entry(e & PFN_MASK, (va >> 12) & 0x1FF)
        if not e & PRESENT:
            return None
        return (e & PFN_MASK) | (va & 0xFFF)

    def read(self, va: int, size: int) -> bytes | None:
        """Bytes at ``va`` (may cross pages); None when any page is not mapped."""
        out = bytearray()
        while size > 0:
            pa = self.translate(va)
            if pa is None:
                return None
            n = min(size, 0x1000 - (va & 0xFFF))
            out += self._read(pa, n)
            va += n
            size -= n
        return bytes(out)

    def read_u64(self, va: int) -> int | None:
        data = self.read(va, 8)
        return None if data is None else int.from_bytes(data, "little")

    def mapped_pages(self, start: int, end: int, step: int = 0x1000, limit: int | None = None) -> Iterator[int]:
        """Virtual addresses of mapped pages in [start, end) on ``step`` boundaries, by walking the tables, lazily.

        Walking the tables skips unmapped gigabytes at once, which is what makes a symbol-less scan
        of the kernel's address range affordable. ``limit``: how many addresses may be yielded at most;
        one more raises TooManyMappings. Each address stands for at least one mapped 4 KiB page, so
        a caller passes the number of pages the input holds (plus a slack): tables that map more than
        that (every entry naming the same frame, a self-referencing page at every level) are not a real
        kernel's, and the walk's work stays bounded by the input's real size whatever the tables claim.
        """
        count = 0
        for va in self._mapped_pages(start, end, step):
            count += 1
            if limit is not None and count > limit:
                raise TooManyMappings(f"DTB 0x{self.dtb:x} maps more than {limit:,} pages in "
                                      f"0x{start:x}-0x{end:x}: more than the input holds")
            yield va

    def _mapped_pages(self, start: int, end: int, step: int) -> Iterator[int]:
        va = start
        while va < end:
            i4, i3, i2 = (va >> 39) & 0x1FF, (va >> 30) & 0x1FF, (va >> 21) & 0x1FF
            e4 = self._entry(self.dtb, i4)
            if not e4 & PRESENT:
                va = canonical(((va >> 39) + 1) << 39)
                continue
            e3 = self._entry(e4 & PFN_MASK, i3)
            if not e3 & PRESENT:
                va = canonical(((va >> 30) + 1) << 30)
                continue
            if e3 & LARGE:
                yield from range(va, min(end, canonical(((va >> 30) + 1) << 30)), step)
                va = canonical(((va >> 30) + 1) << 30)
                continue
            e2 = self._entry(e3 & PFN_MASK, i2)
            nxt = canonical(((va >> 21) + 1) << 21)
            if e2 & PRESENT:
                if e2 & LARGE or step >= 0x200000:
                    yield from (range(va, min(end, nxt), step) if step < 0x200000 else (va,))
                else:
                    for i1 in range((va >> 12) & 0x1FF, 512):
                        page_va = (va & ~0x1FFFFF) | (i1 << 12)
                        if page_va >= end:
                            break
                        if self._entry(e2 & PFN_MASK, i1) & PRESENT and page_va % step == 0:
                            yield page_va
            va = nxt

    def self_references(self) -> int:
        """How many PML4 entries point back at the PML4 itself (Windows keeps exactly one: the self-map)."""
        return sum(1 for i in range(512) if self._entry(self.dtb, i) & (PFN_MASK | PRESENT) == self.dtb | PRESENT)
