"""Stage 1 of finding Windows: the kernel's page tables (DTB) and ntoskrnl's image, without symbols.

The order of attempts follows cost: a DMP input's own header DirectoryTableBase first, the vCPU
notes' CR3 and IDT next (the divide-error handler
lies inside ntoskrnl), then a page-table walk of the kernel range through that CR3, and only for
inputs without usable notes (raw images, savevm streams) a scan of memory for a PML4 that maps
itself (Windows' self-map entry) and KUSER_SHARED_DATA. Every failed attempt is kept in
``KernelView.tried`` so that "no Windows kernel found" can say what was tried.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from construct import Container

from wincrash.errors import WincrashError
from wincrash.memory.qemu_elf import cpu_mode
from wincrash.memory.source import PhysicalSource
from wincrash.windows.paging import KUSER_SHARED_DATA_VA, PFN_MASK, AddressSpace, TooManyMappings, cr3_base
from wincrash.windows.pe import PeImage, is_kernel_pdb, is_secure_kernel_pdb, parse_pe

KERNEL_SCAN_START = 0xFFFFF800_00000000
KERNEL_SCAN_END = 0xFFFFF810_00000000
MAX_SCAN_BACK = 64 << 20  # bytes: how far below an IDT handler ntoskrnl's header may lie
MAX_PML4_CANDIDATES = 64  # self-mapped pages tried before giving up on a raw image
# Pages a kernel-range walk may find beyond the pages the input holds (firmware, device memory mapped
# by the kernel): past that the tables map more than exists, so they are not a real kernel's.
WALK_SLACK_PAGES = 4096
WALKS_PER_SEARCH = 8  # the search's total walking budget, in walks of the input's size
PML4_SCAN_CHUNK = 0x200000  # bytes read per pread while scanning for a PML4


@dataclass(frozen=True)
class SecureKernel:
    """The VBS secure kernel (VTL1) met while scanning a DTB that turned out not to be NT's."""

    pdb: str | None
    base: int  # virtual address of securekernel's image
    directory_table_base: int  # physical address of the PML4 that maps it

    def to_dict(self) -> dict[str, str | None]:
        """The --json view (hex strings), as Hyper-V reports carry it."""
        return {"pdb": self.pdb, "base": hex(self.base), "directory_table_base": hex(self.directory_table_base)}


@dataclass(frozen=True)
class KernelView:
    """NT's kernel address space and ntoskrnl's image, and how they were found.

    ``space`` is the one AddressSpace over ``dtb`` (physical address of NT's PML4, CR3 without PCID
    bits) that every later stage reads through; ``image`` is ntoskrnl as mapped at its virtual base.
    ``dtb_method``/``kernel_method`` say where each came from ("CR3 of vCPU 1", "IDT of vCPU 1", ...);
    ``tried`` lists, in order, every attempt that failed before (and while) finding them.
    """

    dtb: int
    space: AddressSpace
    image: PeImage
    dtb_method: str
    kernel_method: str
    tried: tuple[str, ...]
    secure_kernel: SecureKernel | None = None

    def read_image_range(self, va: int, size: int) -> bytes:
        """``size`` bytes at virtual ``va`` with unmapped (paged-out) pages read as zeros."""
        out = bytearray()
        for page in range(va & ~0xFFF, va + size, 0x1000):
            data = self.space.read(page, 0x1000)
            out += data if data is not None else bytes(0x1000)
        skip = va & 0xFFF
        return bytes(out[skip:skip + size])


def idt_handler(space: AddressSpace, idt_base: int) -> int | None:
    """The address of IDT vector 0's handler (divide error: code inside the kernel that owns the IDT).

    Reads the 16-byte x64 interrupt gate (Intel SDM vol. 3, 6.14.1): offset bits 0-15, 16-31, 32-63.
    None when the IDT's page is not mapped through ``space``.
    """
    gate = space.read(idt_base, 16)
    if gate is None:
        return None
    return struct.unpack_from("<H", gate, 0)[0] | struct.unpack_from("<H", gate, 6)[0] << 16 | \
        struct.unpack_from("<I", gate, 8)[0] << 32


def images_around_idt_handler(space: AddressSpace, idt_base: int, want_exports: bool = True) -> Iterator[PeImage]:
    """PE images that contain the IDT's divide-error handler, scanning down from it page by page (64 MiB at most)."""
    handler = idt_handler(space, idt_base)
    if handler is None:
        return
    for back in range(0, MAX_SCAN_BACK, 0x1000):
        base = (handler & ~0xFFF) - back
        if space.read(base, 2) == b"MZ":
            image = parse_pe(space.read, base, want_exports=want_exports)
            if image and image.contains(handler):
                yield image


def find_kernel(source: PhysicalSource) -> KernelView:
    """Find NT's DTB and ntoskrnl in ``source``.

    Raises WincrashError("no Windows kernel found: <every attempt>") when no DTB leads to a PE image
    whose CodeView names ntkrnlmp.pdb/ntoskrnl.pdb.
    """
    search = _KernelSearch(source)
    view = search.run()
    if view is None:
        raise WincrashError("no Windows kernel found: " + "; ".join(search.tried))
    return view


class _KernelSearch:
    """One search's scratch state (attempts and a secure kernel met on the way); produces a KernelView."""

    def __init__(self, source: PhysicalSource) -> None:
        self.source = source
        self.tried: list[str] = []
        self.secure_kernel: SecureKernel | None = None
        self.walk_limit = source.held_pages + WALK_SLACK_PAGES  # addresses one kernel-range walk may meet
        self.walk_budget = WALKS_PER_SEARCH * self.walk_limit  # and all walks of this search together

    def _view(self, space: AddressSpace, image: PeImage, dtb_method: str, kernel_method: str) -> KernelView:
        return KernelView(space.dtb, space, image, dtb_method, kernel_method, tuple(self.tried), self.secure_kernel)

    def run(self) -> KernelView | None:
        """The first DTB that leads to ntoskrnl: an input DMP header's DirectoryTableBase, vCPU CR3s
        (kernel-mode vCPUs first), then a PML4 scan."""
        cpus = self.source.cpus
        long_cpus = [(i, c) for i, c in enumerate(cpus) if cpu_mode(c) == "long"]
        long_cpus.sort(key=lambda ic: ic[1].cs.selector & 3)  # kernel-mode vCPUs first
        if cpus and not long_cpus:
            self.tried.append("no vCPU was in long mode (32-bit guests are not supported yet, or firmware/boot)")
        seen: set[int] = set()
        view = self._from_dump_header(seen)
        if view is not None:
            return view
        for i, cpu in long_cpus:
            dtb = cr3_base(cpu.cr[3])
            if dtb in seen:
                continue
            seen.add(dtb)
            space = AddressSpace(self.source.read, dtb)
            if space.translate(KUSER_SHARED_DATA_VA) is None:
                self.tried.append(f"CR3 0x{dtb:x} of vCPU {i} does not map KUSER_SHARED_DATA")
                continue
            image = self._kernel_from_idt(space, cpu, i)
            if image is not None:
                return self._view(space, image, f"CR3 of vCPU {i}", f"IDT of vCPU {i}")
            image = self._kernel_by_scan(space)
            if image is not None:
                return self._view(space, image, f"CR3 of vCPU {i}", "scan of kernel address space")
        if not cpus:
            self.tried.append(f"no vCPU notes in the input ({_input_kind(self.source)})")
        for dtb in self._scan_for_pml4():
            if dtb in seen:
                continue
            seen.add(dtb)
            space = AddressSpace(self.source.read, dtb)
            if (refs := space.self_references()) != 1:
                self.tried.append(f"PML4 candidate 0x{dtb:x} has {refs} self-referencing entries (Windows has one)")
            else:
                image = self._kernel_by_scan(space)
                if image is not None:
                    return self._view(space, image, "scan for a self-referencing PML4",
                                      "scan of kernel address space")
            if len(seen) > MAX_PML4_CANDIDATES or self.walk_budget <= 0:
                break
        self.tried.append("scanned memory for a PML4 with a self-reference that maps KUSER_SHARED_DATA and a "
                          f"kernel: {len(seen)} candidate(s), none led to ntoskrnl")
        return None

    def _from_dump_header(self, seen: set[int]) -> KernelView | None:
        """A DMP input: its header's DirectoryTableBase is the first DTB tried (then the usual search)."""
        header = self.source.dump_header
        if header is None or header.directory_table_base is None:
            return None
        dtb = cr3_base(header.directory_table_base)
        seen.add(dtb)
        space = AddressSpace(self.source.read, dtb)
        if space.translate(KUSER_SHARED_DATA_VA) is None:
            self.tried.append(f"DirectoryTableBase 0x{dtb:x} of the input dump's header does not map "
                              "KUSER_SHARED_DATA")
            return None
        image = self._kernel_by_scan(space)
        if image is None:
            return None
        return self._view(space, image, "DirectoryTableBase of the input dump's header", "scan of kernel address space")

    def _kernel_from_idt(self, space: AddressSpace, cpu: Container, index: int) -> PeImage | None:
        handler = idt_handler(space, cpu.idt.base)
        if handler is None:
            self.tried.append(f"IDT of vCPU {index} at 0x{cpu.idt.base:x} is not mapped")
            return None
        for image in images_around_idt_handler(space, cpu.idt.base):
            if is_kernel_pdb(image.pdb_name):
                return image
        self.tried.append(f"no ntoskrnl image below the vCPU {index} divide-error handler 0x{handler:x}")
        return None

    def _kernel_by_scan(self, space: AddressSpace) -> PeImage | None:
        """ntoskrnl among the PE headers mapped in the kernel range (2 MiB steps first, then 4 KiB).

        Each walk meets at most ``walk_limit`` addresses (the input's pages and a slack) and the whole
        search at most ``walk_budget``: tables that map more than the input holds are rejected.
        """
        try:
            return self._scan_kernel_range(space)
        except TooManyMappings as exc:
            self.tried.append(f"{exc}: not a real kernel's page tables")
            return None

    def _scan_kernel_range(self, space: AddressSpace) -> PeImage | None:
        for step in (0x200000, 0x1000):
            limit = min(self.walk_limit, max(self.walk_budget, 0))
            for va in space.mapped_pages(KERNEL_SCAN_START, KERNEL_SCAN_END, step, limit):
                self.walk_budget -= 1
                if space.read(va, 2) == b"MZ":
                    image = parse_pe(space.read, va)
                    if image and is_kernel_pdb(image.pdb_name):
                        return image
                    if image and is_secure_kernel_pdb(image.pdb_name) and self.secure_kernel is None:
                        self.secure_kernel = SecureKernel(image.pdb_name, image.base, space.dtb)
                        self.tried.append(f"DTB 0x{space.dtb:x} is the secure kernel's (VTL1), not NT's")
                        break
        self.tried.append(f"no PE image naming ntkrnlmp.pdb/ntoskrnl.pdb mapped in "
                          f"0x{KERNEL_SCAN_START:x}-0x{KERNEL_SCAN_END:x} through DTB 0x{space.dtb:x}")
        return None

    def _scan_for_pml4(self) -> Iterator[int]:
        """Pages whose kernel half holds an entry pointing back at the page itself (Windows' self-map).

        Reads the source's scan windows (PhysicalSource.scan_windows: file order, PML4_SCAN_CHUNK bytes at a
        time, holes skipped; a monitor-backed source fetches them): work and memory bounded by the input's
        size, not by its number of runs.
        """
        for data, pieces in self.source.scan_windows(PML4_SCAN_CHUNK):
            for pa, rel, n in pieces:
                for p in range(rel, min(rel + n, len(data)) - 0xFFF, 0x1000):
                    if self._is_self_mapped(data, p, pa + p - rel):
                        yield pa + p - rel

    def _is_self_mapped(self, data: bytes, at: int, pa: int) -> bool:
        """The page at ``data[at:at + 0x1000]`` (physical ``pa``) has a present, writable kernel-half entry
        naming ``pa`` and maps KUSER."""
        needle = ((pa >> 16) & 0xFFFFFF).to_bytes(3, "little")
        pos = data.find(needle, at + 0x800, at + 0x1000)
        while pos != -1:
            if (pos - at) % 8 == 2:
                entry = int.from_bytes(data[pos - 2:pos + 6], "little")
                if entry & PFN_MASK == pa and entry & 3 == 3:
                    return AddressSpace(self.source.read, pa).translate(KUSER_SHARED_DATA_VA) is not None
            pos = data.find(needle, pos + 1, at + 0x1000)
        return False


def _input_kind(source: PhysicalSource) -> str:
    """The input's kind for messages: a DMP names its dump type, a raw file is a "raw image"."""
    if source.dump_header is not None:
        return source.dump_header.kind
    return "raw image" if source.kind == "raw" else source.kind
