"""Stage 3 of finding Windows: everything a DMP header needs, read through the KDBG's pointers.

read_facts() takes the kernel (windows/kernel.py) and its KDBG (windows/kdbg.py) and reads the
version (windows/version.py), KUSER_SHARED_DATA, KiBugcheckData, MmPhysicalMemoryBlock, the
processors (windows/vcpus.py) and the System process's DTB. Each value records how it was found
(``methods``); what could not be read becomes a warning and a documented default, never an error.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from wincrash.memory.source import PhysicalSource
from wincrash.windows.kdbg import KdbgBlock
from wincrash.windows.kernel import KernelView
from wincrash.windows.memory_runs import read_runs
from wincrash.windows.offsets import BUILDS
from wincrash.windows.paging import KUSER_SHARED_DATA_VA, AddressSpace, cr3_base
from wincrash.windows.vcpus import CpuFacts, HyperV, read_processors
from wincrash.windows.version import read_kuser, read_version

KPROCESS_DIRECTORY_TABLE_BASE = 0x28  # same on every x64 build (see windows/offsets.py)


@dataclass(frozen=True)
class WindowsFacts:
    """What the converter needs to write a DMP header and patch memory, and how each value was found.

    Units: ``runs`` are (first page frame number, page count) pairs of 4 KiB pages; ``system_time``
    is a FILETIME (100 ns since 1601-01-01 UTC) and ``interrupt_time`` 100 ns since boot, both from
    KUSER_SHARED_DATA (0 when unreadable); ``system_dtb`` the physical address of the System
    process's PML4 (None when not found: the header then uses ``dtb``). ``bugcheck_code`` is the
    32-bit stop code from KiBugcheckData (0: the guest had not crashed). ``product_type`` and
    ``suite_mask`` are KUSER_SHARED_DATA's NtProductType and SuiteMask; ``nt_major``/``nt_minor``
    its NtMajorVersion/NtMinorVersion. ``methods`` maps a fact to how it was found; ``warnings``
    are for the user.
    """

    kernel: KernelView
    kdbg: KdbgBlock
    build: int
    major_version: int
    kd_secondary_version: int
    nt_build_lab: str | None
    cpus: tuple[CpuFacts, ...]
    bugcheck_code: int
    bugcheck_parameters: tuple[int, int, int, int]
    runs: tuple[tuple[int, int], ...]
    system_time: int
    interrupt_time: int
    product_type: int
    suite_mask: int
    nt_major: int
    nt_minor: int
    system_dtb: int | None
    hyperv: HyperV | None
    methods: Mapping[str, str]
    warnings: tuple[str, ...]

    @property
    def dtb(self) -> int:
        """Physical address of the PML4 NT's kernel was found through."""
        return self.kernel.dtb

    @property
    def crashed(self) -> bool:
        """True when KiBugcheckData holds a stop code (the guest bugchecked)."""
        return self.bugcheck_code != 0

    def to_dict(self, register_sources: Mapping[int, str] | None = None) -> dict[str, Any]:
        """The --json view: values and how each was found.

        ``register_sources`` (processor number -> where its registers came from) overrides what the
        analysis found, for the processors a dump plan took from elsewhere.
        """
        k = self.kernel.image
        sources = register_sources or {}
        return {
            "directory_table_base": hex(self.dtb),
            "kernel": {"base": hex(k.base), "size": hex(k.size_of_image), "pdb": k.pdb_name, "pdb_guid": k.pdb_guid,
                       "pdb_age": k.pdb_age},
            "kdbg": {"va": hex(self.kdbg.va), "pa": hex(self.kdbg.pa or 0), "encoded": self.kdbg.encoded,
                     "size": hex(len(self.kdbg.plain))},
            "build": self.build, "nt_build_lab": self.nt_build_lab, "nt_version": f"{self.nt_major}.{self.nt_minor}",
            "processors": [{"number": c.number, "kprcb": hex(c.kprcb), "context": hex(c.context_va or 0),
                            "registers_from": sources.get(c.number, c.register_source)} for c in self.cpus],
            "bugcheck": {"code": hex(self.bugcheck_code), "parameters": [hex(p) for p in self.bugcheck_parameters],
                         "guest_crashed": self.crashed},
            "runs": [{"base_page": hex(b), "page_count": c} for b, c in self.runs],
            "system_time": self.system_time, "interrupt_time": self.interrupt_time,
            "product_type": self.product_type, "suite_mask": hex(self.suite_mask),
            "hyperv": None if self.hyperv is None else self.hyperv.to_dict(),
            "methods": dict(self.methods), "warnings": list(self.warnings),
        }


def read_facts(source: PhysicalSource, kernel: KernelView, kdbg: KdbgBlock) -> WindowsFacts:
    """Read every header fact through ``kernel``'s address space and ``kdbg``'s pointers; never raises
    for unreadable memory (warnings and defaults instead)."""
    methods = {"directory_table_base": kernel.dtb_method, "kernel": kernel.kernel_method, "kdbg": kdbg.method}
    warnings: list[str] = []
    version = read_version(kernel, kdbg)
    methods.update(version.methods)
    warnings += version.warnings
    build = version.build
    kuser = read_kuser(kernel)
    if kuser is None:
        warnings.append("KUSER_SHARED_DATA is not readable: no system time")
    elif not build and kuser.nt_build_number:
        build = kuser.nt_build_number
        methods["build"] = "KUSER_SHARED_DATA.NtBuildNumber"
    bugcheck = read_bugcheck(kernel.space, kdbg)
    if bugcheck is None:
        warnings.append("KiBugcheckData is not readable: bugcheck taken as none")
    runs, runs_method, runs_warnings = read_runs(source, kernel.space, kdbg)
    methods["runs"] = runs_method
    warnings += runs_warnings
    processors = read_processors(source, kernel, kdbg)
    if processors.method is not None:
        methods["cpus"] = processors.method
    warnings += processors.warnings
    code, params = bugcheck or (0, (0, 0, 0, 0))
    return WindowsFacts(
        kernel=kernel, kdbg=kdbg, build=build, major_version=version.major_version,
        kd_secondary_version=version.kd_secondary_version, nt_build_lab=version.nt_build_lab, cpus=processors.cpus,
        bugcheck_code=code, bugcheck_parameters=params, runs=runs,
        system_time=kuser.system_time if kuser else 0, interrupt_time=kuser.interrupt_time if kuser else 0,
        product_type=kuser.product_type if kuser else 1, suite_mask=kuser.suite_mask if kuser else 0,
        nt_major=kuser.nt_major if kuser else 0, nt_minor=kuser.nt_minor if kuser else 0,
        system_dtb=read_system_dtb(source, kernel.space, kdbg, build), hyperv=processors.hyperv,
        methods=MappingProxyType(methods), warnings=tuple(warnings),
    )


def read_bugcheck(space: AddressSpace, kdbg: KdbgBlock) -> tuple[int, tuple[int, int, int, int]] | None:
    """(32-bit stop code, its four parameters) from KiBugcheckData (5 qwords); None when unreadable."""
    raw = space.read(kdbg.ki_bugcheck_data, 40)
    if raw is None:
        return None
    code, p1, p2, p3, p4 = struct.unpack("<5Q", raw)
    return code & 0xFFFFFFFF, (p1, p2, p3, p4)


def read_system_dtb(source: PhysicalSource, space: AddressSpace, kdbg: KdbgBlock, build: int) -> int | None:
    """The System process's DirectoryTableBase (physical), which WinDbg expects in the header.

    The first PsActiveProcessHead entry is System's EPROCESS.ActiveProcessLinks; the offset of that
    field is known only for the builds in windows/offsets.py (None for the others, and when the
    value read does not map KUSER_SHARED_DATA).
    """
    known = BUILDS.get(build)
    first = space.read_u64(kdbg.ps_active_process_head)
    if known is None or not first:
        return None
    links = known.off("_EPROCESS.ActiveProcessLinks")
    dtb = space.read_u64(first - links + KPROCESS_DIRECTORY_TABLE_BASE)
    if dtb and AddressSpace(source.read, dtb).translate(KUSER_SHARED_DATA_VA) is not None:
        return cr3_base(dtb)
    return None
