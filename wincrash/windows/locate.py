"""Find Windows inside physical memory without symbols: DTB, ntoskrnl, KDBG, CPUs, bugcheck, runs.

Every fact records how it was found (``methods``), and every failed attempt is kept in ``tried``
so that "no Windows kernel found" can say what was tried. The order of attempts follows cost:
what the vCPU notes give directly first, scans last.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from construct import Container

from wincrash.errors import WincrashError
from wincrash.formats.kdbg import KDDEBUGGER_DATA64
from wincrash.memory.qemu_elf import cpu_mode
from wincrash.memory.source import PhysicalSource
from wincrash.windows import kdbg as kdbgmod
from wincrash.windows.offsets import BUILDS, KPCR_PRCB_OFFSET
from wincrash.windows.paging import KUSER_SHARED_DATA_VA, PFN_MASK, AddressSpace, cr3_base
from wincrash.windows.pe import PeImage, is_hypervisor_pdb, is_kernel_pdb, is_secure_kernel_pdb, parse_pe

KERNEL_SCAN_START = 0xFFFFF800_00000000
KERNEL_SCAN_END = 0xFFFFF810_00000000
MAX_SCAN_BACK = 64 << 20  # how far below an IDT handler ntoskrnl's header may lie
MAX_PROCESSORS = 2048
KPROCESS_DIRECTORY_TABLE_BASE = 0x28  # same on every x64 build (see windows/offsets.py)


@dataclass
class CpuFacts:
    """One processor as the dump will describe it."""

    number: int
    kprcb: int
    note_index: int | None  # which QEMU CPU note holds its registers (None: no registers)
    context_va: int | None = None
    context_pa: int | None = None
    proc_state_context_va: int | None = None  # KPRCB.ProcessorState.ContextFrame: Windows' own saved context
    register_source: str = "qemu-note"


@dataclass
class WindowsFacts:
    """What the converter needs to write a DMP header and patch memory."""

    dtb: int = 0
    kernel: PeImage | None = None
    kdbg: kdbgmod.KdbgMatch | None = None
    kdbg_fields: Container | None = None
    kdbg_pa: int | None = None
    build: int = 0
    major_version: int = 0xF
    kd_secondary_version: int = 0
    cpus: list[CpuFacts] = field(default_factory=list)
    bugcheck_code: int = 0
    bugcheck_parameters: tuple[int, int, int, int] = (0, 0, 0, 0)
    crashed: bool = False
    runs: list[tuple[int, int]] = field(default_factory=list)
    system_time: int = 0
    interrupt_time: int = 0
    product_type: int = 1
    suite_mask: int = 0
    nt_major: int = 0
    nt_minor: int = 0
    nt_build_lab: str | None = None
    system_dtb: int | None = None
    hyperv: dict[str, Any] | None = None  # set when vCPU notes were taken inside the Hyper-V hypervisor
    methods: dict[str, str] = field(default_factory=dict)
    tried: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The --json view: values and how each was found."""
        k = self.kernel
        return {
            "directory_table_base": hex(self.dtb),
            "kernel": None if k is None else {"base": hex(k.base), "size": hex(k.size_of_image), "pdb": k.pdb_name,
                                              "pdb_guid": k.pdb_guid, "pdb_age": k.pdb_age},
            "kdbg": None if self.kdbg is None else {"va": hex(self.kdbg.va), "pa": hex(self.kdbg_pa or 0),
                                                    "encoded": self.kdbg.encoded, "size": hex(len(self.kdbg.plain))},
            "build": self.build, "nt_build_lab": self.nt_build_lab, "nt_version": f"{self.nt_major}.{self.nt_minor}",
            "processors": [{"number": c.number, "kprcb": hex(c.kprcb), "context": hex(c.context_va or 0),
                            "registers_from": c.register_source} for c in self.cpus],
            "bugcheck": {"code": hex(self.bugcheck_code), "parameters": [hex(p) for p in self.bugcheck_parameters],
                         "guest_crashed": self.crashed},
            "runs": [{"base_page": hex(b), "page_count": c} for b, c in self.runs],
            "system_time": self.system_time, "interrupt_time": self.interrupt_time,
            "product_type": self.product_type, "suite_mask": hex(self.suite_mask),
            "hyperv": self.hyperv,
            "methods": self.methods, "warnings": self.warnings,
        }


def idt_handler(space: AddressSpace, idt_base: int) -> int | None:
    """The address of IDT vector 0's handler (divide error: code inside the kernel that owns the IDT)."""
    gate = space.read(idt_base, 16)
    if gate is None:
        return None
    return struct.unpack_from("<H", gate, 0)[0] | struct.unpack_from("<H", gate, 6)[0] << 16 | \
        struct.unpack_from("<I", gate, 8)[0] << 32


def images_around_idt_handler(space: AddressSpace, idt_base: int, want_exports: bool = True) -> Iterator[PeImage]:
    """PE images that contain the IDT's divide-error handler, scanning down from it page by page."""
    handler = idt_handler(space, idt_base)
    if handler is None:
        return
    for back in range(0, MAX_SCAN_BACK, 0x1000):
        base = (handler & ~0xFFF) - back
        if space.read(base, 2) == b"MZ":
            image = parse_pe(space.read, base, want_exports=want_exports)
            if image and image.contains(handler):
                yield image


class WindowsLocator:
    """Runs the search over one memory source."""

    def __init__(self, source: PhysicalSource) -> None:
        self.source = source
        self.facts = WindowsFacts()
        self.space: AddressSpace | None = None
        self._secure_kernel: dict[str, str | None] | None = None  # VBS: seen while scanning, reported with Hyper-V

    # ----------------------------------------------------------------------------------- main
    def locate(self) -> WindowsFacts:
        f = self.facts
        self._find_dtb_and_kernel()
        if f.kernel is None or self.space is None:
            raise WincrashError("no Windows kernel found: " + "; ".join(f.tried))
        self._find_kdbg()
        self._read_kdbg_facts()
        return f

    # ----------------------------------------------------------------------------------- Hyper-V
    def _hypervisor_of(self, cpu: Container) -> PeImage | None:
        """The hypervisor image a vCPU was running in, found through its own CR3 and IDT."""
        if cpu_mode(cpu) != "long":
            return None
        space = self._space(cr3_base(cpu.cr[3]))
        image = next(images_around_idt_handler(space, cpu.idt.base, want_exports=False), None)
        return image if image is not None and is_hypervisor_pdb(image.pdb_name) else None

    def _classify_notes(self, by_kprcb: dict[int, int]) -> tuple[dict[int, int], list[int]]:
        """(processor number -> note index for notes in NT context, note indexes in hypervisor context)."""
        note_for: dict[int, int] = {}
        in_hypervisor: list[int] = []
        hv_image: PeImage | None = None
        for i, cpu in enumerate(self.source.cpus):
            kpcr = cpu.gs.base if cpu.cs.selector & 3 == 0 else cpu.kernel_gs_base
            n = by_kprcb.get(kpcr + KPCR_PRCB_OFFSET)
            if n is not None and self._space(cr3_base(cpu.cr[3])).translate(KUSER_SHARED_DATA_VA) is not None:
                note_for[n] = i
                continue
            image = self._hypervisor_of(cpu)
            if image is not None:
                in_hypervisor.append(i)
                hv_image = hv_image or image
        if hv_image is not None:
            self.facts.hyperv = {
                "detected": True,
                "hypervisor": {"pdb": hv_image.pdb_name, "base": hex(hv_image.base),
                               "size": hex(hv_image.size_of_image), "pdb_guid": hv_image.pdb_guid,
                               "pdb_age": hv_image.pdb_age},
                "cpus_in_hypervisor_context": in_hypervisor,
                "secure_kernel": self._secure_kernel,
            }
        return note_for, in_hypervisor

    def _space(self, dtb: int) -> AddressSpace:
        return AddressSpace(self.source.read, dtb)

    # ----------------------------------------------------------------------------------- DTB + kernel
    def _find_dtb_and_kernel(self) -> None:
        f = self.facts
        long_cpus = [(i, c) for i, c in enumerate(self.source.cpus) if cpu_mode(c) == "long"]
        long_cpus.sort(key=lambda ic: ic[1].cs.selector & 3)  # kernel-mode vCPUs first
        if self.source.cpus and not long_cpus:
            f.tried.append("no vCPU was in long mode (32-bit guests are not supported yet, or firmware/boot)")
        seen: set[int] = set()
        for i, cpu in long_cpus:
            dtb = cr3_base(cpu.cr[3])
            if dtb in seen:
                continue
            seen.add(dtb)
            space = self._space(dtb)
            if space.translate(KUSER_SHARED_DATA_VA) is None:
                f.tried.append(f"CR3 0x{dtb:x} of vCPU {i} does not map KUSER_SHARED_DATA")
                continue
            kernel = self._kernel_from_idt(space, cpu, i)
            if kernel is not None:
                self._accept(space, kernel, f"CR3 of vCPU {i}", f"IDT of vCPU {i}")
                return
            kernel = self._kernel_by_scan(space)
            if kernel is not None:
                self._accept(space, kernel, f"CR3 of vCPU {i}", "scan of kernel address space")
                return
        if not self.source.cpus:
            f.tried.append("no vCPU notes in the input (raw image)")
        for dtb in self._scan_for_pml4():
            if dtb in seen:
                continue
            seen.add(dtb)
            space = self._space(dtb)
            kernel = self._kernel_by_scan(space)
            if kernel is not None:
                self._accept(space, kernel, "scan for a self-referencing PML4", "scan of kernel address space")
                return
            if len(seen) > 64:
                break
        f.tried.append("scanned memory for a PML4 with a self-reference that maps KUSER_SHARED_DATA and a kernel: "
                       f"{len(seen)} candidate(s), none led to ntoskrnl")

    def _accept(self, space: AddressSpace, kernel: PeImage, dtb_method: str, kernel_method: str) -> None:
        self.space = space
        self.facts.dtb = space.dtb
        self.facts.kernel = kernel
        self.facts.methods["directory_table_base"] = dtb_method
        self.facts.methods["kernel"] = kernel_method

    def _kernel_from_idt(self, space: AddressSpace, cpu: Container, index: int) -> PeImage | None:
        if idt_handler(space, cpu.idt.base) is None:
            self.facts.tried.append(f"IDT of vCPU {index} at 0x{cpu.idt.base:x} is not mapped")
            return None
        for image in images_around_idt_handler(space, cpu.idt.base):
            if is_kernel_pdb(image.pdb_name):
                return image
        self.facts.tried.append(f"no ntoskrnl image below the vCPU {index} divide-error handler "
                                f"0x{idt_handler(space, cpu.idt.base):x}")
        return None

    def _kernel_by_scan(self, space: AddressSpace) -> PeImage | None:
        for step in (0x200000, 0x1000):
            for va in space.mapped_pages(KERNEL_SCAN_START, KERNEL_SCAN_END, step):
                if space.read(va, 2) == b"MZ":
                    image = parse_pe(space.read, va)
                    if image and is_kernel_pdb(image.pdb_name):
                        return image
                    if image and is_secure_kernel_pdb(image.pdb_name) and self._secure_kernel is None:
                        self._secure_kernel = {"pdb": image.pdb_name, "base": hex(image.base),
                                               "directory_table_base": hex(space.dtb)}
                        self.facts.tried.append(f"DTB 0x{space.dtb:x} is the secure kernel's (VTL1), not NT's")
                        break
        self.facts.tried.append(f"no PE image naming ntkrnlmp.pdb/ntoskrnl.pdb mapped in "
                                f"0x{KERNEL_SCAN_START:x}-0x{KERNEL_SCAN_END:x} through DTB 0x{space.dtb:x}")
        return None

    def _scan_for_pml4(self) -> Iterator[int]:
        """Pages whose kernel half holds an entry pointing back at the page itself (Windows' self-map)."""
        src = self.source
        chunk = 0x200000
        for seg in list(src.segments):
            for pa, file_off, n in src.page_extents(seg.paddr, seg.paddr + seg.filesz):
                for at in range(0, n, chunk):
                    data = os.pread(src.fileno, min(chunk, n - at), file_off + at)
                    for p in range(0, len(data) - 0xFFF, 0x1000):
                        page_pa = pa + at + p
                        if self._is_self_mapped(data[p:p + 0x1000], page_pa):
                            yield page_pa

    def _is_self_mapped(self, page: bytes, pa: int) -> bool:
        needle = ((pa >> 16) & 0xFFFFFF).to_bytes(3, "little")
        pos = page.find(needle, 0x800)
        while pos != -1:
            if pos % 8 == 2:
                entry = int.from_bytes(page[pos - 2:pos + 6], "little")
                if entry & PFN_MASK == pa and entry & 3 == 3:
                    return self._space(pa).translate(KUSER_SHARED_DATA_VA) is not None
            pos = page.find(needle, pos + 1)
        return False

    # ----------------------------------------------------------------------------------- KDBG
    def _find_kdbg(self) -> None:
        f, space, kernel = self.facts, self.space, self.facts.kernel
        assert space is not None and kernel is not None
        end = kernel.base + kernel.size_of_image
        sections = [s for s in kernel.sections if s.writable_data] or kernel.sections
        for section in sections:
            data = self._read_image_range(kernel.base + section.rva, section.size)
            match = kdbgmod.find_in_data(data, kernel.base + section.rva, kernel.base, end)
            if match:
                f.kdbg = match
                f.kdbg_pa = space.translate(match.va)
                f.methods["kdbg"] = (f"{'encoded' if match.encoded else 'plain'} block in section {section.name} "
                                     + ("decoded with keys solved from known plaintext" if match.encoded else ""))
                return
        f.tried.append(f"ntoskrnl found at 0x{kernel.base:x} but no valid KDBG (plain or encoded) in its data "
                       "sections")
        raise WincrashError("no Windows kernel debugger data (KDBG) found: " + "; ".join(f.tried))

    def _read_image_range(self, va: int, size: int) -> bytes:
        """Section bytes, with unmapped (paged-out) pages as zeros."""
        assert self.space is not None
        out = bytearray()
        for page in range(va & ~0xFFF, va + size, 0x1000):
            data = self.space.read(page, 0x1000)
            out += data if data is not None else bytes(0x1000)
        skip = va & 0xFFF
        return bytes(out[skip:skip + size])

    # ----------------------------------------------------------------------------------- from the KDBG
    def _read_kdbg_facts(self) -> None:
        f, space = self.facts, self.space
        assert space is not None and f.kdbg is not None and f.kernel is not None
        plain = f.kdbg.plain.ljust(KDDEBUGGER_DATA64.sizeof(), b"\0")
        k = KDDEBUGGER_DATA64.parse(plain)
        f.kdbg_fields = k
        self._version(k)
        self._kuser()
        raw = space.read(k.KiBugcheckData, 40)
        if raw is None:
            f.warnings.append("KiBugcheckData is not readable: bugcheck taken as none")
        else:
            code, *params = struct.unpack("<5Q", raw)
            f.bugcheck_code, f.bugcheck_parameters = code & 0xFFFFFFFF, tuple(params)  # type: ignore[assignment]
            f.crashed = f.bugcheck_code != 0
        self._runs(k)
        self._cpus(k)
        self._system_dtb(k)

    def _version(self, k: Container) -> None:
        f, space = self.facts, self.space
        assert space is not None and f.kernel is not None
        lab = space.read(k.NtBuildLab, 128)
        if lab:
            f.nt_build_lab = lab.split(b"\0", 1)[0].decode("latin-1")
            head = f.nt_build_lab.split(".", 1)[0]
            if head.isdigit():
                f.build = int(head)
                f.methods["build"] = "NtBuildLab"
        version = self._find_kd_version_block()
        if version is not None:
            major, minor, secondary = version
            f.major_version, f.kd_secondary_version = major, secondary
            if not f.build:
                f.build = minor
                f.methods["build"] = "KdVersionBlock"
            elif minor != f.build:
                f.warnings.append(f"KdVersionBlock says build {minor}, NtBuildLab says {f.build}")
        if not f.build and "NtBuildNumber" in f.kernel.exports:
            value = space.read_u64(f.kernel.base + f.kernel.exports["NtBuildNumber"])
            if value:
                f.build = value & 0xFFFF
                f.methods["build"] = "NtBuildNumber export"

    def _find_kd_version_block(self) -> tuple[int, int, int] | None:
        f = self.facts
        assert f.kernel is not None
        needle = f.kernel.base.to_bytes(8, "little")
        for section in (s for s in f.kernel.sections if s.writable_data):
            data = self._read_image_range(f.kernel.base + section.rva, section.size)
            pos = data.find(needle)
            while pos != -1:
                start = pos - 0x10
                if start >= 0 and start % 8 == 0:
                    major, minor, _proto, _kdsec, flags, machine = struct.unpack_from("<HHBBHH", data, start)
                    if major == 0xF and machine == 0x8664 and 2000 < minor < 60000:
                        f.methods["kd_version_block"] = f"in section {section.name}"
                        return major, minor, data[start + 5]
                pos = data.find(needle, pos + 1)
        return None

    def _kuser(self) -> None:
        f, space = self.facts, self.space
        assert space is not None
        data = space.read(KUSER_SHARED_DATA_VA, 0x2D8)
        if data is None:
            f.warnings.append("KUSER_SHARED_DATA is not readable: no system time")
            return
        low, high1 = struct.unpack_from("<Ii", data, 0x14)
        f.system_time = (high1 << 32 | low) & ((1 << 64) - 1)
        low, high1 = struct.unpack_from("<Ii", data, 0x8)
        f.interrupt_time = (high1 << 32 | low) & ((1 << 64) - 1)
        f.product_type = struct.unpack_from("<I", data, 0x264)[0]
        f.nt_major, f.nt_minor = struct.unpack_from("<II", data, 0x26C)
        f.suite_mask = struct.unpack_from("<I", data, 0x2D0)[0]
        if not f.build and f.nt_major >= 10:
            number = struct.unpack_from("<I", data, 0x260)[0] & 0xFFFF
            if number:
                f.build = number
                f.methods["build"] = "KUSER_SHARED_DATA.NtBuildNumber"

    def _runs(self, k: Container) -> None:
        f, space = self.facts, self.space
        assert space is not None
        pointer = space.read_u64(k.MmPhysicalMemoryBlock)
        head = space.read(pointer, 16) if pointer else None
        if head is None:
            f.warnings.append("MmPhysicalMemoryBlock is not readable: runs taken from the input's RAM ranges")
            f.runs = [(s.paddr // 0x1000, s.size // 0x1000) for s in self.source.segments if s.paddr < 1 << 52]
            f.methods["runs"] = "input segments"
            return
        count, _pad, pages = struct.unpack("<IIQ", head)
        raw = space.read(pointer + 16, 16 * min(count, 4096)) or b""
        runs = [struct.unpack_from("<QQ", raw, 16 * i) for i in range(len(raw) // 16)]
        if sum(c for _, c in runs) != pages:
            f.warnings.append(f"MmPhysicalMemoryBlock: NumberOfPages {pages} differs from the sum of its runs")
        f.runs = [(b, c) for b, c in runs if c]
        f.methods["runs"] = "MmPhysicalMemoryBlock (Windows' own view of RAM)"

    def _cpus(self, k: Container) -> None:
        f, space = self.facts, self.space
        assert space is not None
        blocks = []
        for i in range(MAX_PROCESSORS):
            value = space.read_u64(k.KiProcessorBlock + 8 * i)
            if not value:
                break
            blocks.append(value)
        if not blocks:
            f.warnings.append("KiProcessorBlock is empty or unreadable: no processor contexts written")
            return
        by_kprcb = {kprcb: n for n, kprcb in enumerate(blocks)}
        note_for, in_hypervisor = self._classify_notes(by_kprcb)
        matched_by_gs = bool(note_for)
        if not matched_by_gs and not in_hypervisor and len(self.source.cpus) == len(blocks):
            note_for = {n: n for n in range(len(blocks))}
        how = ("vCPU GS base = KPCR" if matched_by_gs else "vCPU order" if note_for else "no vCPU notes")
        f.methods["cpus"] = f"{how}, {len(blocks)} in KiProcessorBlock"
        for n, kprcb in enumerate(blocks):
            ctx_va = space.read_u64(kprcb + k.OffsetPrcbContext) if k.OffsetPrcbContext else None
            ctx_pa = space.translate(ctx_va) if ctx_va else None
            cpu = CpuFacts(number=n, kprcb=kprcb, note_index=note_for.get(n), context_va=ctx_va, context_pa=ctx_pa,
                           proc_state_context_va=kprcb + k.OffsetPrcbProcStateContext
                           if k.OffsetPrcbProcStateContext else None)
            if cpu.note_index is None:
                cpu.register_source = "none (no matching vCPU note)"
            f.cpus.append(cpu)
        if in_hypervisor:
            f.warnings.append(f"Hyper-V detected: vCPU note(s) {', '.join(map(str, in_hypervisor))} hold the "
                              "hypervisor's registers, not Windows': those processors' contexts come from "
                              "KPRCB.ProcessorState")
        if len(self.source.cpus) and len(self.source.cpus) != len(blocks):
            f.warnings.append(f"{len(self.source.cpus)} vCPU notes but {len(blocks)} processors in KiProcessorBlock")

    def _system_dtb(self, k: Container) -> None:
        """The System process's DirectoryTableBase, which WinDbg expects in the header."""
        f, space = self.facts, self.space
        assert space is not None
        known = BUILDS.get(f.build)
        first = space.read_u64(k.PsActiveProcessHead)
        if known is None or not first:
            return
        links = known.off("_EPROCESS.ActiveProcessLinks")
        dtb = space.read_u64(first - links + KPROCESS_DIRECTORY_TABLE_BASE)
        if dtb and AddressSpace(self.source.read, dtb).translate(KUSER_SHARED_DATA_VA) is not None:
            f.system_dtb = cr3_base(dtb)


def locate_windows(source: PhysicalSource) -> WindowsFacts:
    """Find Windows in ``source`` or raise WincrashError saying what was tried."""
    return WindowsLocator(source).locate()
