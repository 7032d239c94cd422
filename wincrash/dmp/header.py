"""Build the 0x2000-byte DUMP_HEADER64 and the bitmap summary header of the dumps we write.

Windows fills every unused header byte with 'PAGE'; we do the same, so tools that look for the
fill see what they expect, but we never leave it in a field WinDbg reads (the exception record is
zeroed: raw2dmp's 'Unknown exception - code 45474150' mistake).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from construct import Container

from wincrash.formats.dump import (
    BITMAP_SUMMARY_HEADER,
    DUMP_HEADER64,
    DUMP_HEADER64_SIZE,
    DUMP_TYPE_FULL,
    MACHINE_AMD64,
    MAX_RUNS64,
    PHYSICAL_MEMORY_DESCRIPTOR64,
)

PAGE_FILL = b"PAGE"
MAJOR_VERSION_FREE = 0xF


def page_fill(size: int) -> bytes:
    """``size`` bytes of the 'PAGE' pattern."""
    return (PAGE_FILL * (size // 4 + 1))[:size]


@dataclass(frozen=True)
class HeaderFields:
    """What a DUMP_HEADER64 says, in the converter's terms (field meanings: formats/dump.py, kdmp-parser).

    Addresses are kernel virtual except ``directory_table_base`` (physical PML4). ``runs`` are
    (BasePage, PageCount) pairs of 4 KiB pages (stored as a tuple); ``context`` an AMD64 CONTEXT of
    0x4D0 bytes; ``system_time`` a FILETIME and ``system_uptime`` 100 ns since boot;
    ``required_dump_space`` the whole file's size in bytes (the writers fill it in on a copy).
    """

    build: int
    directory_table_base: int
    pfn_database: int
    ps_loaded_module_list: int
    ps_active_process_head: int
    kd_debugger_data_block: int
    number_processors: int
    bugcheck_code: int
    bugcheck_parameters: tuple[int, int, int, int]
    runs: Sequence[tuple[int, int]]  # (BasePage, PageCount)
    context: bytes  # an AMD64 CONTEXT, 0x4D0 bytes
    dump_type: int = DUMP_TYPE_FULL
    required_dump_space: int = 0
    system_time: int = 0
    system_uptime: int = 0
    product_type: int = 1
    suite_mask: int = 0
    kd_secondary_version: int = 0
    comment: str = ""
    machine: int = MACHINE_AMD64
    major_version: int = MAJOR_VERSION_FREE

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple((int(b), int(c)) for b, c in self.runs))
        object.__setattr__(self, "bugcheck_parameters", tuple(self.bugcheck_parameters))


def build_header64(f: HeaderFields) -> bytes:
    """The 0x2000-byte DUMP_HEADER64 for ``f``; raises ValueError for more runs than the header holds (MAX_RUNS64)."""
    if len(f.runs) > MAX_RUNS64:
        raise ValueError(f"{len(f.runs)} memory runs: a dump header holds at most {MAX_RUNS64}")
    runs = PHYSICAL_MEMORY_DESCRIPTOR64.build(Container(
        NumberOfRuns=len(f.runs), Padding=0, NumberOfPages=sum(c for _, c in f.runs),
        Run=[Container(BasePage=b, PageCount=c) for b, c in f.runs]))
    run_buffer = runs + page_fill(0x2C0 - len(runs))
    context_buffer = f.context + page_fill(0xBB8 - len(f.context))
    comment = f.comment.encode("ascii", "replace")[:127]
    header = Container(
        MajorVersion=f.major_version, MinorVersion=f.build,
        DirectoryTableBase=f.directory_table_base, PfnDataBase=f.pfn_database,
        PsLoadedModuleList=f.ps_loaded_module_list, PsActiveProcessHead=f.ps_active_process_head,
        MachineImageType=f.machine, NumberProcessors=f.number_processors,
        BugCheckCode=f.bugcheck_code, BugCheckCodePadding=bytes(4), BugCheckParameter=list(f.bugcheck_parameters),
        VersionUser=page_fill(32), KdDebuggerDataBlock=f.kd_debugger_data_block,
        PhysicalMemoryBlockBuffer=run_buffer, ContextRecordBuffer=context_buffer,
        Exception=Container(ExceptionCode=0, ExceptionFlags=0, ExceptionRecord=0, ExceptionAddress=0,
                            NumberParameters=0, UnusedAlignment=0, ExceptionInformation=[0] * 15),
        DumpType=f.dump_type, DumpTypePadding=bytes(4), RequiredDumpSpace=f.required_dump_space,
        SystemTime=f.system_time, Comment=comment + bytes(128 - len(comment)),
        SystemUpTime=f.system_uptime, MiniDumpFields=0, SecondaryDataState=0,
        ProductType=f.product_type, SuiteMask=f.suite_mask, WriterStatus=0,
        Unused1=0, KdSecondaryVersion=f.kd_secondary_version, Unused2=bytes(2),
        Attributes=0, BootId=0, Reserved0=page_fill(DUMP_HEADER64_SIZE - 0x1058),
    )
    return DUMP_HEADER64.build(header)


def build_bitmap_summary(signature: bytes, first_page: int, present_pages: int, total_pages: int) -> bytes:
    """The 0x38-byte summary header that precedes the bitmap of a DumpType 5 dump.

    ``first_page`` is the file offset (bytes) of the first page; ``present_pages`` how many pages the
    file holds; ``total_pages`` the bitmap's size in bits (highest PFN + 1).
    """
    return BITMAP_SUMMARY_HEADER.build(Container(
        Signature=signature, Padding=page_fill(0x18), FirstPage=first_page,
        TotalPresentPages=present_pages, Pages=total_pages))
