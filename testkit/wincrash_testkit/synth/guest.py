"""Build a synthetic Windows x64 guest: physical memory, vCPU states and the ground truth tests check.

Everything a converter must find is placed as real Windows places it (ISF offsets of real builds, symbol
RVAs of the real kernels, encoded KDBG, self-referencing page tables, Windows' own RAM runs); most of RAM
stays zero, so any size from 256 MiB to 64 GiB costs a few MiB and seconds. Seeded and deterministic.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from construct import Container

from wincrash.formats.kdbg import DBGKD_GET_VERSION64, KDDEBUGGER_DATA64, KDDEBUGGER_DATA64_FIELD_NAMES
from wincrash.windows.offsets import KUSER_SHARED_DATA_VA, WindowsBuild, get_build, kdbg_offset_fields
from wincrash_testkit.synth import hyperv, kdbg_codec, pe
from wincrash_testkit.synth.cpu import GPRS, CpuState, gdt_bytes, idt_entry, kernel_segments
from wincrash_testkit.synth.layout import MIB, RamLayout, make_layout
from wincrash_testkit.synth.paging import (
    KERNEL_DATA,
    NX,
    RW,
    US,
    A,
    AddressSpace,
    D,
    G,
    P,
    VaAllocator,
    canonical,
    pte_base,
)
from wincrash_testkit.synth.physmem import LARGE, PAGE, PageMap, PhysAllocator

SUPPORTED_BUILDS = (7601, 9600, 14393, 17763, 19041)
KUSER_USER_VA = 0x7FFE0000
NMI_HARDWARE_FAILURE = 0x80
CONTEXT_ALL = 0x10001F
CONTEXT_SIZE = 0x4D0
STACK_PAGES = 6
# Functions whose RVAs we use as code addresses (IDT handlers, vCPU RIPs).
CODE_SYMBOLS = ("KeBugCheckEx", "KiIdleLoop", "KiDivideErrorFault", "KiPageFault")
# Kernel variables the generator writes: they define where .data is.
DATA_SYMBOLS = ("KdDebuggerDataBlock", "KdVersionBlock", "KdpDataBlockEncoded", "KdpDebuggerDataListHead",
                "KiWaitNever", "KiWaitAlways", "KiBugCheckData", "PsLoadedModuleList", "PsActiveProcessHead",
                "PspCidTable", "MmPfnDatabase", "MmPhysicalMemoryBlock", "KiProcessorBlock", "KeLoaderBlock",
                "KeNumberProcessors", "PsInitialSystemProcess", "KdDebuggerEnabled", "KdDebuggerNotPresent",
                "KeTimeIncrement")
KERNEL_EXPORTS = ("KdDebuggerEnabled", "KdDebuggerNotPresent", "KeBugCheckEx", "KeCapturePersistentThreadState",
                  "KeNumberProcessors", "MmGetPhysicalMemoryRanges", "MmHighestUserAddress", "MmSystemRangeStart",
                  "MmUserProbeAddress", "NtBuildLab", "NtBuildNumber", "PsInitialSystemProcess",
                  "PsLoadedModuleList")
DRIVERS = ("hal.dll", "kdcom.dll", "CI.dll", "ACPI.sys", "storport.sys", "disk.sys", "Ntfs.sys", "tcpip.sys",
           "volmgr.sys", "pci.sys", "partmgr.sys", "NDIS.SYS", "fltmgr.sys", "netvsc.sys", "vioscsi.sys")


@dataclass(frozen=True)
class GuestSpec:
    """What to generate. ``hyperv``: a root partition under Hyper-V with VBS (see wincrash_testkit.synth.hyperv);
    ``hv_cpus``: which vCPUs' QEMU notes hold the hypervisor's state (None: all of them)."""

    build: int = 19041
    cpus: int = 2
    ram_mib: int = 1024
    seed: int = 1
    crashed: bool = False
    bugcheck_code: int = NMI_HARDWARE_FAILURE
    hyperv: bool = False
    noise_pages: int | None = None
    filler_mib: int = 0  # extra random-content RAM (benchmarks): generated while writing, not held in memory
    hv_cpus: tuple[int, ...] | None = None

    def validate(self) -> None:
        if self.build not in SUPPORTED_BUILDS:
            raise ValueError(f"unsupported build {self.build}; supported: {', '.join(map(str, SUPPORTED_BUILDS))}")
        if not 1 <= self.cpus <= 64:
            raise ValueError("cpus must be 1..64")
        if not 256 <= self.ram_mib <= 65536 or self.ram_mib % 2:
            raise ValueError("ram_mib must be an even number from 256 to 65536")
        if not 0 <= self.filler_mib <= self.ram_mib // 2:
            raise ValueError("filler_mib must be between 0 and half the RAM")
        if self.hv_cpus is not None:
            if not self.hyperv:
                raise ValueError("hv_cpus needs a hyperv guest")
            if len(set(self.hv_cpus)) != len(self.hv_cpus) or not all(0 <= c < self.cpus for c in self.hv_cpus):
                raise ValueError(f"hv_cpus must be distinct CPU numbers from 0 to {self.cpus - 1}")


@dataclass
class Guest:
    spec: GuestSpec
    layout: RamLayout
    mem: PageMap
    cpus: list[CpuState]
    truth: dict = field(default_factory=dict)


def _ksystem_time(value: int) -> bytes:
    """KSYSTEM_TIME: LowPart, High1Time, High2Time (High2 == High1 when consistent)."""
    return struct.pack("<IiI", value & 0xFFFFFFFF, value >> 32, value >> 32)


def _unicode_string(length: int, buffer: int) -> bytes:
    return struct.pack("<HHIQ", length, length + 2, 0, buffer)


class _Builder:
    def __init__(self, spec: GuestSpec) -> None:
        spec.validate()
        self.spec = spec
        self.wb: WindowsBuild = get_build(spec.build)
        self.rng = random.Random(f"wincrash-synth/{spec.seed}/{spec.build}/{spec.cpus}/{spec.ram_mib}")
        self.layout = make_layout(spec.ram_mib * MIB, self.rng)
        if spec.hyperv:
            self.layout, self.hv_range, self.sk_range = hyperv.carve(self.layout, self.rng)
        self.nt_contexts: list[dict] = []
        self.mem = PageMap()
        self.alloc = PhysAllocator(list(self.layout.windows_runs), self.rng)
        self.truth: dict = {}

    # --- address space ---------------------------------------------------------------------------
    def _pml4_slot(self, taken: set[int]) -> int:
        while True:
            slot = self.rng.randrange(0x100, 0x1EF)
            if slot not in taken:
                taken.add(slot)
                return slot

    def build_space(self) -> None:
        taken = {0x1EF, 0x1F0, 0x1F1, 0x1F5}  # KUSER_SHARED_DATA, kernel/drivers, Win7 drivers, Win7 pool
        if self.spec.build >= 14393:
            self.self_ref = self._pml4_slot(taken)
        else:
            self.self_ref = 0x1ED
            taken.add(0x1ED)
        self.space = AddressSpace(self.mem, self.alloc, self.self_ref, self_ref_nx=self.spec.build >= 9600)
        if self.spec.build >= 14393:
            pool_base = canonical(self._pml4_slot(taken) << 39) + self.rng.randrange(0x100, 0x7000000) * PAGE
            self.pfn_database = canonical(self._pml4_slot(taken) << 39)
        else:
            pool_base = 0xFFFFFA8000000000 + self.rng.randrange(0x100, 0x100000) * PAGE
            self.pfn_database = 0xFFFFFA8000000000
            pool_base += 0x10000000000  # keep clear of the PFN database
        self.pool = VaAllocator(self.space, pool_base)

    # --- ntoskrnl ----------------------------------------------------------------------------------
    def plan_kernel(self) -> None:
        wb, rng = self.wb, self.rng
        rvas = wb.rvas
        if self.spec.build == 7601:
            self.kern_base = 0xFFFFF80000000000 + rng.randrange(0x10, 0x30) * LARGE
        else:
            self.kern_base = 0xFFFFF80000000000 + rng.randrange(0x10, 0x4000) * LARGE
        data_lo = min(rvas[s] for s in DATA_SYMBOLS) & ~0xFFF
        data_hi = -(-(max(rvas[s] for s in DATA_SYMBOLS) + 0x400) // PAGE) * PAGE
        self.extras_rva = data_hi  # one page for variables this PDB does not name (e.g. MmHighestPhysicalPage)
        self.extras_used = 0
        self.pcr0_rva = data_hi + PAGE  # CPU 0's KPCR lives in .data, like KiInitialPcr
        pcr_end = self.pcr0_rva + -(-wb.sizes["_KPCR"] // PAGE) * PAGE
        text_end = -(-(max(rvas[s] for s in CODE_SYMBOLS) + 0x20000) // PAGE) * PAGE
        text_end = min(text_end, data_lo - 0x20000)
        page_end = text_end + ((data_lo - text_end) * 3 // 5) & ~0xFFF
        late = [r for r in rvas.values() if r >= pcr_end]
        late_end = -(-(max(late) + 0x10000) // PAGE) * PAGE if late else pcr_end + 0x40000
        init_end = late_end + 0x60000
        self.size_of_image = init_end + 0x6000
        self.sections = [
            pe.Section(".text", 0x1000, text_end - 0x1000, pe.TEXT),
            pe.Section("PAGE", text_end, page_end - text_end, pe.PAGECODE),
            pe.Section(".rdata", page_end, data_lo - page_end, pe.RDATA),
            pe.Section(".data", data_lo, pcr_end - data_lo, pe.DATA),
            pe.Section("PAGEKD", pcr_end, late_end - pcr_end, pe.PAGECODE),
            pe.Section("INIT", late_end, init_end - late_end, pe.INIT),
            pe.Section(".reloc", init_end, 0x6000, pe.RELOC),
        ]
        self.text = (0x1000, text_end)
        # Export and debug directories: the last free pages of .rdata.
        used_pages = {r & ~0xFFF for r in rvas.values()}
        rva = (data_lo - PAGE) & ~0xFFF
        while rva in used_pages or rva - PAGE in used_pages:
            rva -= PAGE
        self.exports_rva = rva - PAGE
        self.debug_rva = rva

    def sym(self, name: str) -> int:
        return self.kern_base + self.wb.rvas[name]

    def extra(self, size: int) -> int:
        """A kernel variable this build's PDB does not list, in .data's spare page."""
        va = self.kern_base + self.extras_rva + self.extras_used
        self.extras_used += -(-size // 8) * 8
        assert self.extras_used <= PAGE
        return va

    def map_kernel(self) -> None:
        chunks = -(-self.size_of_image // LARGE)
        self.kernel_pas = []
        for i in range(chunks):
            pa = self.alloc.large()
            self.space.map_2m(self.kern_base + i * LARGE, pa, P | RW | A | D | G)
            self.kernel_pas.append(pa)
        wb = self.wb
        timestamp = self.rng.randrange(0x50000000, 0x60000000)
        exports = {name: wb.rvas[name] for name in KERNEL_EXPORTS}
        export_blob = pe.export_directory(self.exports_rva, "ntoskrnl.exe", exports, timestamp)
        rsds = pe.codeview_record("ntkrnlmp.pdb", wb.pdb_guid, wb.pdb_age)
        debug = pe.debug_directory(self.debug_rva + 0x40, len(rsds), timestamp)
        self.header_page = pe.pe_headers(
            image_base=self.kern_base, size_of_image=self.size_of_image, sections=self.sections,
            entry_rva=wb.rvas["KiSystemStartup"], timestamp=timestamp, os_version=(wb.nt_major, wb.nt_minor),
            export_dir=(self.exports_rva, len(export_blob)), debug_dir=(self.debug_rva, len(debug)))
        self.space.write(self.kern_base, self.header_page)
        self.space.write(self.kern_base + self.exports_rva, export_blob)
        self.space.write(self.kern_base + self.debug_rva, debug)
        self.space.write(self.kern_base + self.debug_rva + 0x40, rsds)
        # Some code pages, so that .text is not all zeros (never starting with 'MZ').
        code_pages = {self.sym(s) & ~0xFFF for s in CODE_SYMBOLS}
        for _ in range(24):
            code_pages.add((self.kern_base + self.rng.randrange(*self.text)) & ~0xFFF)
        for va in sorted(code_pages):
            self.space.write(va, b"\xcc\xcc" + self.rng.randbytes(PAGE - 2))
        nt_build_number = 0xF0000000 | self.spec.build
        self.space.write_u32(self.sym("NtBuildNumber"), nt_build_number)
        self.space.write(self.sym("NtBuildLab"), wb.nt_build_lab.encode() + b"\x00")
        self.space.write_u32(self.sym("KeNumberProcessors"), self.spec.cpus)
        self.space.write(self.sym("KdDebuggerEnabled"), b"\x00")
        self.space.write(self.sym("KdDebuggerNotPresent"), b"\x01")
        self.space.write_u64(self.sym("MmHighestUserAddress"), 0x7FFFFFFEFFFF)
        self.space.write_u64(self.sym("MmUserProbeAddress"), 0x7FFFFFFF0000)
        self.space.write_u64(self.sym("MmSystemRangeStart"), 0xFFFF800000000000)
        self.space.write_u32(self.sym("KeTimeIncrement"), 156250)
        self.space.write_u64(self.sym("MmPfnDatabase"), self.pfn_database)
        self.truth["kernel"] = {
            "base": self.kern_base, "pa": self.kernel_pas[0], "size_of_image": self.size_of_image,
            "large_page_pas": list(self.kernel_pas), "pdb_name": "ntkrnlmp.pdb", "pdb_guid": wb.pdb_guid,
            "pdb_age": wb.pdb_age, "timestamp": timestamp, "nt_build_number": nt_build_number,
            "nt_build_lab": wb.nt_build_lab, "exports": {k: self.kern_base + v for k, v in exports.items()},
            "sections": [{"name": s.name, "rva": s.rva, "size": s.vsize} for s in self.sections],
        }

    # --- drivers and module list ------------------------------------------------------------------
    def load_drivers(self) -> None:
        rng = self.rng
        names = list(DRIVERS[:8]) + rng.sample(DRIVERS[8:], rng.randint(0, len(DRIVERS) - 8))
        if self.spec.build == 7601:
            va = 0xFFFFF88000C00000 + rng.randrange(0, 0x400) * PAGE
        else:
            va = self.kern_base + -(-self.size_of_image // LARGE) * LARGE + rng.randrange(0x10, 0x400) * PAGE
        self.modules = [{"name": "ntoskrnl.exe", "full_name": r"\SystemRoot\system32\ntoskrnl.exe",
                         "base": self.kern_base, "size": self.size_of_image,
                         "entry": self.kern_base + self.wb.rvas["KiSystemStartup"]}]
        for name in names:
            npages = rng.randrange(0x8, 0x60)
            size = npages * PAGE
            for i in range(npages):
                self.space.map_4k(va + i * PAGE, self.alloc.page(), P | RW | A | D | G)
            text_size = (npages // 2) * PAGE
            sections = [pe.Section(".text", 0x1000, text_size - 0x1000, pe.TEXT),
                        pe.Section(".rdata", text_size, PAGE, pe.RDATA),
                        pe.Section(".data", text_size + PAGE, size - text_size - 2 * PAGE, pe.DATA),
                        pe.Section(".reloc", size - PAGE, PAGE, pe.RELOC)]
            rsds = pe.codeview_record(name.rsplit(".", 1)[0].lower() + ".pdb", rng.randbytes(16).hex().upper(), 1)
            timestamp = rng.randrange(0x50000000, 0x60000000)
            debug = pe.debug_directory(text_size + 0x40, len(rsds), timestamp)
            header = pe.pe_headers(image_base=va, size_of_image=size, sections=sections, entry_rva=0x1010,
                                   timestamp=timestamp, os_version=(self.wb.nt_major, self.wb.nt_minor),
                                   debug_dir=(text_size, len(debug)), dll=name.endswith(".dll"))
            self.space.write(va, header)
            self.space.write(va + text_size, debug)
            self.space.write(va + text_size + 0x40, rsds)
            folder = r"\SystemRoot\system32" if name.endswith(".dll") else r"\SystemRoot\System32\drivers"
            self.modules.append({"name": name, "full_name": f"{folder}\\{name}", "base": va, "size": size,
                                 "entry": va + 0x1010})
            va += size + rng.randrange(1, 0x40) * PAGE

    def _string(self, text: str) -> tuple[int, int]:
        raw = text.encode("utf-16-le")
        va = self.pool.alloc(len(raw) + 2)
        self.space.write(va, raw + b"\x00\x00")
        return va, len(raw)

    def _link_list(self, head: int, entries: list[int]) -> None:
        """Circular doubly linked LIST_ENTRY chain: head <-> entries[0] <-> ... <-> head."""
        chain = [head, *entries]
        for i, node in enumerate(chain):
            self.space.write_u64(node, chain[(i + 1) % len(chain)])
            self.space.write_u64(node + 8, chain[i - 1])

    def module_list(self) -> None:
        o = self.wb.offsets
        size = self.wb.sizes["_KLDR_DATA_TABLE_ENTRY"]
        entries = []
        for mod in self.modules:
            entry = self.pool.alloc(size)
            full_va, full_len = self._string(mod["full_name"])
            base_va, base_len = self._string(mod["name"])
            self.space.write_u64(entry + o["_KLDR_DATA_TABLE_ENTRY.DllBase"], mod["base"])
            self.space.write_u64(entry + o["_KLDR_DATA_TABLE_ENTRY.EntryPoint"], mod["entry"])
            self.space.write_u32(entry + o["_KLDR_DATA_TABLE_ENTRY.SizeOfImage"], mod["size"])
            self.space.write(entry + o["_KLDR_DATA_TABLE_ENTRY.FullDllName"], _unicode_string(full_len, full_va))
            self.space.write(entry + o["_KLDR_DATA_TABLE_ENTRY.BaseDllName"], _unicode_string(base_len, base_va))
            self.space.write_u32(entry + o["_KLDR_DATA_TABLE_ENTRY.Flags"], 0x49104000)
            mod["ldr_entry"] = entry
            entries.append(entry + o["_KLDR_DATA_TABLE_ENTRY.InLoadOrderLinks"])
        self._link_list(self.sym("PsLoadedModuleList"), entries)
        self.truth["modules"] = self.modules

    # --- processes and threads --------------------------------------------------------------------
    def processes(self) -> None:
        o, sizes = self.wb.offsets, self.wb.sizes
        procs = []
        for name, pid, dtb in (("Idle", 0, self.space.dtb), ("System", 4, self.space.dtb),
                               ("smss.exe", self.rng.randrange(0x40, 0x200) * 4, self.alloc.page())):
            ep = self.pool.alloc(sizes["_EPROCESS"], 16)
            self.space.write_u64(ep + o["_KPROCESS.DirectoryTableBase"], dtb)
            self.space.write_u64(ep + o["_EPROCESS.UniqueProcessId"], pid)
            self.space.write(ep + o["_EPROCESS.ImageFileName"], name.encode()[:14] + b"\x00")
            procs.append({"name": name, "pid": pid, "eprocess": ep, "dtb": dtb})
        self.idle_process, self.system_process = procs[0]["eprocess"], procs[1]["eprocess"]
        active = procs[1:]  # the idle process is not on PsActiveProcessHead
        self._link_list(self.sym("PsActiveProcessHead"),
                        [p["eprocess"] + o["_EPROCESS.ActiveProcessLinks"] for p in active])
        self.space.write_u64(self.sym("PsInitialSystemProcess"), self.system_process)
        self.truth["processes"] = active

    def _thread(self, process: int, stack_top: int, rsp: int, cpu: int) -> int:
        o = self.wb.offsets
        th = self.pool.alloc(self.wb.sizes["_ETHREAD"], 16)
        self.space.write_u64(th + o["_KTHREAD.InitialStack"], stack_top)
        self.space.write_u64(th + o["_KTHREAD.StackBase"], stack_top)
        self.space.write_u64(th + o["_KTHREAD.StackLimit"], stack_top - STACK_PAGES * PAGE)
        self.space.write_u64(th + o["_KTHREAD.KernelStack"], rsp)
        self.space.write_u64(th + o["_KTHREAD.ApcState"] + o["_KAPC_STATE.Process"], process)
        self.space.write_u64(th + o["_KTHREAD.Process"], process)
        self.space.write(th + o["_KTHREAD.State"], b"\x02")  # Running
        self.space.write_u32(th + o["_KTHREAD.NextProcessor"], cpu)
        return th

    # --- physical memory descriptor, bugcheck, KUSER_SHARED_DATA ------------------------------------
    def memory_block(self) -> None:
        runs = self.layout.windows_runs
        npages = sum(c for _, c in runs)
        blob = struct.pack("<IIQ", len(runs), 0, npages) + b"".join(struct.pack("<QQ", b, c) for b, c in runs)
        desc = self.pool.alloc(len(blob), 16)
        self.space.write(desc, blob)
        self.space.write_u64(self.sym("MmPhysicalMemoryBlock"), desc)
        self.highest_page_var = self.extra(8) if "MmHighestPhysicalPage" not in self.wb.rvas \
            else self.sym("MmHighestPhysicalPage")
        self.space.write_u64(self.highest_page_var, self.layout.highest_page)
        self.truth["physical_memory_block"] = {"pointer_va": self.sym("MmPhysicalMemoryBlock"),
                                               "descriptor_va": desc, "runs": [list(r) for r in runs],
                                               "number_of_pages": npages}
        self.truth["mm_highest_physical_page"] = {"va": self.highest_page_var, "value": self.layout.highest_page}

    def bugcheck(self) -> None:
        va = self.sym("KiBugCheckData")
        if self.spec.crashed:
            code = self.spec.bugcheck_code
            if code == NMI_HARDWARE_FAILURE:
                params = [0x4F4454, 0, 0, 0]
            else:
                params = [self.rng.getrandbits(64) for _ in range(4)]
        else:
            code, params = 0, [0, 0, 0, 0]
        self.space.write(va, struct.pack("<5Q", code, *params))
        self.truth["bugcheck"] = {"va": va, "code": code, "params": params, "crashed": self.spec.crashed,
                                  "cpu": 0 if self.spec.crashed else None}

    def kuser(self) -> None:
        o, wb, rng = self.wb.offsets, self.wb, self.rng
        pa = self.alloc.page()
        self.space.map_4k(KUSER_SHARED_DATA_VA, pa, KERNEL_DATA)
        self.space.map_4k(KUSER_USER_VA, pa, P | US | A | NX)  # the same page, read-only for user mode
        system_time = rng.randrange(132223104000000000, 133800000000000000)  # 2020 .. 2025 (FILETIME)
        interrupt_time = rng.randrange(600, 30 * 86400) * 10_000_000 + rng.randrange(10_000_000)
        server = self.spec.build in (9600, 14393, 17763)
        product_type = 3 if server else 1
        suite_mask = 0x112 if server else 0x110
        k = KUSER_SHARED_DATA_VA
        self.space.write_u32(k + o["_KUSER_SHARED_DATA.TickCountMultiplier"], 0x0FA00000)
        self.space.write(k + o["_KUSER_SHARED_DATA.InterruptTime"], _ksystem_time(interrupt_time))
        self.space.write(k + o["_KUSER_SHARED_DATA.SystemTime"], _ksystem_time(system_time))
        if "_KUSER_SHARED_DATA.NtBuildNumber" in o:
            self.space.write_u32(k + o["_KUSER_SHARED_DATA.NtBuildNumber"], self.spec.build)
        self.space.write_u32(k + o["_KUSER_SHARED_DATA.NtProductType"], product_type)
        self.space.write(k + o["_KUSER_SHARED_DATA.ProductTypeIsValid"], b"\x01")
        self.space.write_u32(k + o["_KUSER_SHARED_DATA.NtMajorVersion"], wb.nt_major)
        self.space.write_u32(k + o["_KUSER_SHARED_DATA.NtMinorVersion"], wb.nt_minor)
        self.space.write_u32(k + o["_KUSER_SHARED_DATA.SuiteMask"], suite_mask)
        self.truth["kuser_shared_data"] = {
            "va": KUSER_SHARED_DATA_VA, "pa": pa, "system_time": system_time, "interrupt_time": interrupt_time,
            "nt_build_number": self.spec.build if "_KUSER_SHARED_DATA.NtBuildNumber" in o else None,
            "product_type": product_type, "suite_mask": suite_mask, "nt_major": wb.nt_major,
            "nt_minor": wb.nt_minor}

    # --- processors -------------------------------------------------------------------------------
    def processors(self) -> None:
        wb, o, rng, s = self.wb, self.wb.offsets, self.rng, self.space
        kpcr_size = wb.sizes["_KPCR"]
        text_lo, text_hi = self.text
        handlers = [self.kern_base + (rng.randrange(text_lo, text_hi) & ~0xF) for _ in range(256)]
        handlers[0] = self.sym("KiDivideErrorFault")
        handlers[14] = self.sym("KiPageFault")
        build = self.spec.build
        cr4 = 0x1506F8 if build >= 14393 else 0x406F8
        self.cpu_states: list[CpuState] = []
        cpu_truth = []
        kprcbs = []
        for i in range(self.spec.cpus):
            kpcr = self.kern_base + self.pcr0_rva if i == 0 else self.pool.alloc_pages(-(-kpcr_size // PAGE))
            prcb = kpcr + o["_KPCR.Prcb"]
            gdt = self.pool.alloc(0x80, 0x1000)
            tss = self.pool.alloc(0x68, 0x10)
            idt = self.pool.alloc(0x1000, 0x1000)
            context = self.pool.alloc(CONTEXT_SIZE, 0x40)
            stack_top = self.pool.alloc_pages(STACK_PAGES) + STACK_PAGES * PAGE
            self.pool.skip(PAGE)  # guard page
            rsp = stack_top - (rng.randrange(0x100, 0x1800) & ~0xF) - 8
            s.write(stack_top - PAGE, rng.randbytes(PAGE))  # some stack contents
            s.write(gdt, gdt_bytes(tss))
            s.write(idt, b"".join(idt_entry(h, ist=(3 if v == 2 else 0)) for v, h in enumerate(handlers)))
            s.write(tss + 4, struct.pack("<Q", stack_top))
            s.write(tss + 0x66, struct.pack("<H", 0x68))
            crashed_here = self.spec.crashed and i == 0
            if crashed_here:
                thread = self._thread(self.system_process, stack_top, rsp, i)
                rip = self.sym("KeBugCheckEx") + rng.randrange(0x10, 0x80)
            else:
                thread = self._thread(self.idle_process, stack_top, rsp, i)
                rip = self.sym("KiIdleLoop") + rng.randrange(0x10, 0x100)
            kgs = rng.randrange(0x10000, 0x7FF000) * PAGE  # a user TEB
            # KPCR
            s.write_u64(kpcr + o["_KPCR.GdtBase"], gdt)
            s.write_u64(kpcr + o["_KPCR.TssBase"], tss)
            s.write_u64(kpcr + o["_KPCR.Self"], kpcr)
            s.write_u64(kpcr + o["_KPCR.CurrentPrcb"], prcb)
            s.write_u64(kpcr + o["_KPCR.IdtBase"], idt)
            s.write(kpcr + o["_KPCR.Irql"], b"\x0f" if crashed_here else b"\x00")
            # KPRCB
            s.write_u64(prcb + o["_KPRCB.CurrentThread"], thread)
            s.write_u64(prcb + o["_KPRCB.IdleThread"], thread if not crashed_here else
                        self._thread(self.idle_process, stack_top, rsp, i))
            s.write_u32(prcb + o["_KPRCB.Number"], i)
            s.write_u64(prcb + o["_KPRCB.Context"], context)
            s.write_u32(prcb + o[wb.prcb_context_flags_key], CONTEXT_ALL)
            s.write(prcb + o["_KPRCB.CpuType"], b"\x06")
            s.write_u32(prcb + o["_KPRCB.MHz"], 2400)
            s.write(prcb + o["_KPRCB.VendorString"], b"AuthenticAMD\x00")
            sr = prcb + o["_KPRCB.ProcessorState"] + o["_KPROCESSOR_STATE.SpecialRegisters"]
            cr2 = canonical(rng.getrandbits(48)) & ~0x7
            for name, value in (("Cr0", 0x80050033), ("Cr2", cr2), ("Cr3", s.dtb), ("Cr4", cr4),
                                ("MsrGsBase", kpcr), ("MsrGsSwap", kgs)):
                s.write_u64(sr + o[f"_KSPECIAL_REGISTERS.{name}"], value)
            s.write(sr + o["_KSPECIAL_REGISTERS.Gdtr"] + 6, struct.pack("<HQ", 0x7F, gdt))
            s.write(sr + o["_KSPECIAL_REGISTERS.Idtr"] + 6, struct.pack("<HQ", 0xFFF, idt))
            s.write(sr + o["_KSPECIAL_REGISTERS.Tr"], struct.pack("<HHI", 0x40, 0, 0x1F80))
            regs = {name: rng.getrandbits(64) for name in GPRS}
            regs["rsp"] = rsp
            regs["rbp"] = stack_top - rng.randrange(0x10, 0x80) * 8
            regs["rip"] = rip
            regs["rflags"] = 0x46 if crashed_here else rng.choice((0x246, 0x202, 0x286))
            state = CpuState(index=i, regs=regs, segments=kernel_segments(kpcr, gdt, idt, tss),
                             cr=[0x80050033, 0, cr2, s.dtb, cr4], kernel_gs_base=kgs)
            self.cpu_states.append(state)
            if self.spec.hyperv or self.spec.crashed:  # KeBugCheckEx and the frozen CPUs save their state there
                self.nt_contexts.append(hyperv.write_processor_state(self, i, prcb, state))
            kprcbs.append(prcb)
            cpu_truth.append({"index": i, "kpcr": kpcr, "kpcr_pa": s.pa(kpcr), "kprcb": prcb, "kprcb_pa": s.pa(prcb),
                              "context_va": context, "context_pa": s.pa(context), "current_thread": thread,
                              "gdt": gdt, "idt": idt, "tss": tss, "stack_top": stack_top, **state.as_dict()})
        s.write(self.sym("KiProcessorBlock"), struct.pack(f"<{len(kprcbs)}Q", *kprcbs))
        self.truth["processors"] = cpu_truth

    # --- KDBG and KdVersionBlock ------------------------------------------------------------------
    def debugger_data(self) -> None:
        wb, rng, s = self.wb, self.rng, self.space
        kdbg_va = self.sym("KdDebuggerDataBlock")
        list_head = self.sym("KdpDebuggerDataListHead")
        s.write(list_head, struct.pack("<QQ", kdbg_va, kdbg_va))
        data_sec = next(x for x in self.sections if x.name == ".data")
        blk = KDDEBUGGER_DATA64.parse(bytes(KDDEBUGGER_DATA64.sizeof()))
        for name in KDDEBUGGER_DATA64_FIELD_NAMES:  # every address field: somewhere plausible in .data
            sub = next(sc for sc in KDDEBUGGER_DATA64.subcons if sc.name == name)
            if sub.sizeof() == 8 and not name.startswith(("Padding", "Retpoline")):
                blk[name] = self.kern_base + ((data_sec.rva + rng.randrange(data_sec.vsize - 8)) & ~7)
        blk.Header = Container(List=Container(Flink=list_head, Blink=list_head),
                               OwnerTag=int.from_bytes(b"KDBG", "little"), Size=wb.kdbg_size)
        named = {"KernBase": self.kern_base, "BreakpointWithStatus": self.sym("KeBugCheckEx") - 0x40,
                 "KiCallUserMode": self.sym("KiIdleLoop") - 0x200,
                 "PsLoadedModuleList": self.sym("PsLoadedModuleList"),
                 "PsActiveProcessHead": self.sym("PsActiveProcessHead"), "PspCidTable": self.sym("PspCidTable"),
                 "KeTimeIncrement": self.sym("KeTimeIncrement"), "KiBugcheckData": self.sym("KiBugCheckData"),
                 "ObpRootDirectoryObject": self.sym("ObpRootDirectoryObject"),
                 "MmPfnDatabase": self.sym("MmPfnDatabase"), "MmHighestPhysicalPage": self.highest_page_var,
                 "MmHighestUserAddress": self.sym("MmHighestUserAddress"),
                 "MmSystemRangeStart": self.sym("MmSystemRangeStart"),
                 "MmUserProbeAddress": self.sym("MmUserProbeAddress"),
                 "KdPrintCircularBuffer": self.sym("KdPrintCircularBuffer"), "NtBuildLab": self.sym("NtBuildLab"),
                 "KiProcessorBlock": self.sym("KiProcessorBlock"), "MmUnloadedDrivers": self.sym("MmUnloadedDrivers"),
                 "MmPhysicalMemoryBlock": self.sym("MmPhysicalMemoryBlock"), "KeLoaderBlock": self.sym("KeLoaderBlock"),
                 "PaeEnabled": 1}
        for name in ("MmLowestPhysicalPage", "MmNumberOfPhysicalPages"):
            named[name] = self.sym(name) if name in wb.rvas else self.extra(8)
        s.write_u64(named["MmNumberOfPhysicalPages"], self.layout.windows_pages)
        s.write_u64(named["MmLowestPhysicalPage"], self.layout.windows_runs[0][0])
        named.update(kdbg_offset_fields(wb))
        if wb.kdbg_size > 0x360:
            named["PteBase"] = pte_base(self.self_ref)
        for name, value in named.items():
            blk[name] = value
        for name in ("RetpolineStubFunctionTable", "Padding0", "Padding1", "Padding2", "Padding3"):
            blk[name] = 0
        plain_full = KDDEBUGGER_DATA64.build(blk)
        plain = plain_full[:wb.kdbg_size]
        wait_never, wait_always = rng.getrandbits(64), rng.getrandbits(64)
        encoded_flag = self.sym("KdpDataBlockEncoded")
        s.write_u64(self.sym("KiWaitNever"), wait_never)
        s.write_u64(self.sym("KiWaitAlways"), wait_always)
        s.write(encoded_flag, b"\x01" if wb.kdbg_encoded else b"\x00")
        stored = kdbg_codec.encode_block(plain, wait_never, wait_always, encoded_flag) if wb.kdbg_encoded else plain
        s.write(kdbg_va, stored)
        # KdVersionBlock
        version_va = self.sym("KdVersionBlock")
        s.write(version_va, DBGKD_GET_VERSION64.build(dict(
            MajorVersion=0xF, MinorVersion=self.spec.build, ProtocolVersion=6, KdSecondaryVersion=2,
            Flags=0x7, MachineType=0x8664, MaxPacketType=0xC, MaxStateChange=3, MaxManipulate=0x33, Simulation=0,
            Unused=0, KernBase=self.kern_base, PsLoadedModuleList=self.sym("PsLoadedModuleList"),
            DebuggerDataList=list_head)))
        self.truth["kdbg"] = {
            "va": kdbg_va, "pa": s.pa(kdbg_va), "size": wb.kdbg_size, "encoded": wb.kdbg_encoded,
            "plain_hex": plain.hex(), "stored_hex": stored.hex(), "wait_never": wait_never,
            "wait_always": wait_always, "block_encoded_va": encoded_flag, "list_head": list_head,
            "fields": {k: v for k, v in named.items()}}
        self.truth["kd_version_block"] = {"va": version_va, "pa": s.pa(version_va)}

    # --- noise ------------------------------------------------------------------------------------
    def noise(self) -> None:
        rng, mem = self.rng, self.mem
        count = self.spec.noise_pages
        if count is None:
            count = 64 + (self.spec.ram_mib // 1024) * 8
        decoys: dict[str, list[int]] = {"kdbg_strings": [], "mz_pages": [], "ntoskrnl_header_copy": []}
        for n in range(count):
            pa = self.alloc.page()
            page = bytearray(rng.randbytes(PAGE))
            kind = n % 10
            if kind == 0:  # stray 'KDBG' tags, one with a header-like shape but wrong contents
                for _ in range(rng.randint(1, 4)):
                    off = rng.randrange(0, PAGE - 0x40, 8)
                    page[off + 0x10:off + 0x18] = b"KDBG" + struct.pack("<I", rng.choice((0x340, 0x380)))
                decoys["kdbg_strings"].append(pa)
            elif kind == 1:  # MZ pages that are not the kernel
                page[0:2] = b"MZ"
                if rng.random() < 0.5:
                    struct.pack_into("<I", page, 0x3C, 0x80)
                    page[0x80:0x84] = b"PE\x00\x00"
                decoys["mz_pages"].append(pa)
            if page[:2] == b"MZ" and kind != 1:
                page[0] = 0
            mem.write(pa, bytes(page))
        # A stale copy of ntoskrnl's first page, as the file cache may hold (not mapped at KernBase).
        pa = self.alloc.page()
        mem.write(pa, self.header_page)
        decoys["ntoskrnl_header_copy"].append(pa)
        # RAM QEMU dumps but Windows does not own: firmware data, option ROM, BIOS.
        for addr, size in self.layout.reserved:
            mem.write(addr, rng.randbytes(min(size, PAGE)))
        mem.write(0xC0000, b"\x55\xaa" + rng.randbytes(PAGE - 2))
        mem.write(0xFFFF0000, rng.randbytes(PAGE))
        mem.write(0xFFFFF000, rng.randbytes(PAGE - 16) + b"\xea\x5b\xe0\x00\xf0" + bytes(11))
        self.truth["decoys"] = decoys
        for _ in range(self.spec.filler_mib * MIB // LARGE):
            mem.filler[self.alloc.large() // PAGE] = rng.getrandbits(64)
        self.truth["filler_chunks"] = sorted(pfn * PAGE for pfn in mem.filler)


def generate(spec: GuestSpec) -> Guest:
    """Build the whole guest in memory (a few MiB whatever its RAM size)."""
    b = _Builder(spec)
    b.build_space()
    b.plan_kernel()
    b.map_kernel()
    b.load_drivers()
    b.module_list()
    b.processes()
    b.memory_block()
    b.bugcheck()
    b.kuser()
    b.processors()
    b.debugger_data()
    if spec.hyperv:
        hyperv.build(b)
    b.noise()
    layout = b.layout
    symbols = {name: b.sym(name) for name in DATA_SYMBOLS + ("NtBuildNumber", "NtBuildLab")}
    truth = {
        "generator": "wincrash_testkit.synth", "spec": {"build": spec.build, "cpus": spec.cpus, "ram_mib": spec.ram_mib,
                                                "seed": spec.seed, "crashed": spec.crashed},
        "build": spec.build, "cpus": spec.cpus, "ram_bytes": layout.ram_bytes,
        "elf_blocks": [list(x) for x in layout.elf_blocks], "windows_runs": [list(x) for x in layout.windows_runs],
        "reserved_ranges": [list(x) for x in layout.reserved],
        "dtb": b.space.dtb, "self_ref_slot": b.self_ref, "pte_base": pte_base(b.self_ref),
        "mm_pfn_database": {"va": b.sym("MmPfnDatabase"), "value": b.pfn_database},
        "symbols": symbols, "ki_processor_block": b.sym("KiProcessorBlock"),
        "ps_loaded_module_list": b.sym("PsLoadedModuleList"), "ps_active_process_head": b.sym("PsActiveProcessHead"),
        "saved_contexts": b.nt_contexts,  # KPRCB.ProcessorState.ContextFrame written (crashed or Hyper-V guests)
        **b.truth,
    }
    if spec.hyperv:
        truth["spec"].update(hyperv=True, hv_cpus=truth["hyperv"]["hv_cpus"])
    return Guest(spec=spec, layout=layout, mem=b.mem, cpus=b.cpu_states, truth=truth)
