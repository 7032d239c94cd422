"""QEMU's dump-guest-memory ELF read as a stream (a pipe), front to back, without a file.

QEMU writes the ELF header, the program headers and the notes first, then each PT_LOAD's bytes in
file-offset order (dump/dump.c: dump_begin, then dump_iterate over guest_phys_blocks). ElfStream is fed
those bytes as they come and hands back, once the head is complete, the layout (segments, vCPU notes:
memory/qemu_elf.py reads it), then guest RAM as (guest-physical address, whole pages).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from wincrash.errors import WincrashError
from wincrash.formats.elf import ELF64_EHDR_SIZE, ELF64_PHDR_SIZE, Elf64_Ehdr, Elf64_Phdr
from wincrash.memory.qemu_elf import MAX_NOTES_BYTES, MAX_PHDRS, ElfLayout, Segment, read_elf_layout

PAGE = 0x1000
MAX_HEAD_BYTES = MAX_NOTES_BYTES + MAX_PHDRS * ELF64_PHDR_SIZE + ELF64_EHDR_SIZE


class ElfStream:
    """Feed the stream with ``feed(bytes)``; iterate its result for (paddr, memoryview of whole pages).

    ``layout`` is None until the head (header, program headers, notes) has arrived. Bytes outside every
    PT_LOAD (padding, trailing section headers) are consumed and ignored.

    :raises WincrashError: the stream is not an ELF core, or its head is malformed or larger than
        MAX_HEAD_BYTES.
    """

    def __init__(self) -> None:
        self.layout: ElfLayout | None = None
        self.head = bytearray()
        self.head_end: int | None = None
        self.pos = 0  # stream offset of the next byte fed
        self.loads: list[Segment] = []  # sorted by file offset
        self.carry = bytearray()  # bytes of a page not yet complete
        self.carry_pa = 0

    def feed(self, data: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
        """Take the next bytes of the stream; yield (paddr, page-aligned whole pages) of RAM they complete."""
        view = memoryview(data)
        if self.layout is None:
            view = self._take_head(view)
            if self.layout is None:
                return
        while len(view):
            seg = self._load_at(self.pos)
            if seg is None:
                nxt = min((s.offset for s in self.loads if s.offset > self.pos), default=None)
                skip = len(view) if nxt is None else min(len(view), nxt - self.pos)
                self.pos += skip
                view = view[skip:]
                continue
            n = min(len(view), seg.offset + seg.filesz - self.pos)
            pa = seg.paddr + self.pos - seg.offset
            yield from self._pages(pa, view[:n])
            self.pos += n
            view = view[n:]

    def _pages(self, pa: int, piece: memoryview) -> Iterator[tuple[int, memoryview]]:
        if self.carry:
            need = PAGE - len(self.carry)
            self.carry += piece[:need]
            piece, pa = piece[need:], pa + need
            if len(self.carry) < PAGE:
                return
            yield self.carry_pa, memoryview(bytes(self.carry))
            self.carry = bytearray()
        whole = len(piece) // PAGE * PAGE
        if whole:
            yield pa, piece[:whole]
        if whole < len(piece):
            self.carry = bytearray(piece[whole:])
            self.carry_pa = pa + whole

    def _load_at(self, offset: int) -> Segment | None:
        for seg in self.loads:
            if seg.offset <= offset < seg.offset + seg.filesz:
                return seg
        return None

    def _take_head(self, view: memoryview) -> memoryview:
        if self.head_end is None:
            need = ELF64_EHDR_SIZE - len(self.head)
            self.head += view[:need]
            self.pos += min(need, len(view))
            view = view[need:]
            if len(self.head) < ELF64_EHDR_SIZE:
                return view
            if self.head[:4] != b"\x7fELF":
                raise WincrashError("the dump stream is not an ELF file")
            ehdr = Elf64_Ehdr.parse(bytes(self.head))
            if not 0 < ehdr.e_phnum <= MAX_PHDRS:
                raise WincrashError(f"the dump stream's ELF header names {ehdr.e_phnum} program headers")
            self.head_end = ehdr.e_phoff + ehdr.e_phnum * ELF64_PHDR_SIZE
        if len(self.head) < self.head_end:
            need = self.head_end - len(self.head)
            self.head += view[:need]
            self.pos += min(need, len(view))
            view = view[need:]
            if len(self.head) < self.head_end:
                return view
            self.head_end = self._notes_end()
            if self.head_end > MAX_HEAD_BYTES:
                raise WincrashError(f"the dump stream's ELF head is {self.head_end:,} bytes long: malformed")
            if len(self.head) < self.head_end:
                return self._take_head(view)
        if self.layout is None and len(self.head) >= self.head_end:
            self.layout = self._parse()
            self.loads = sorted((s for s in self.layout.segments), key=lambda s: s.offset)
        return view

    def _notes_end(self) -> int:
        ehdr = Elf64_Ehdr.parse(bytes(self.head[:ELF64_EHDR_SIZE]))
        end = len(self.head)
        for i in range(ehdr.e_phnum):
            at = ehdr.e_phoff + i * ELF64_PHDR_SIZE
            ph = Elf64_Phdr.parse(bytes(self.head[at:at + ELF64_PHDR_SIZE]))
            if ph.p_type == 4:  # PT_NOTE
                end = max(end, ph.p_offset + ph.p_filesz)
        return end

    def _parse(self) -> ElfLayout:
        fd = os.memfd_create("wincrash-elf-head", os.MFD_CLOEXEC)
        with os.fdopen(fd, "r+b") as fh:
            fh.write(self.head)
            fh.flush()
            return read_elf_layout(fh, 1 << 62)  # the segments' bytes follow in the stream: take them as present
