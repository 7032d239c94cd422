"""Microsoft kernel crash dump headers (MEMORY.DMP): DUMP_HEADER64/32 and what follows them.

Offsets are those of ../shared/DESIGN.md §3 (checked against kdmp-parser and real dumps). The
header's unused bytes hold the ASCII pattern 'PAGE' in Windows' own dumps; the regions that are
unions in C (physical memory block, context record) are raw bytes here and are parsed by the
caller with PHYSICAL_MEMORY_DESCRIPTOR64 / CONTEXT_AMD64_STRUCT, because in triage dumps they may
hold the 'PAGE' fill instead of a descriptor.
"""

from __future__ import annotations

from enum import IntEnum

from construct import Array, Bytes, Const, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from wincrash.formats.layout import check_layout

PAGE_SIZE = 0x1000
PAGE_PATTERN_U32 = 0x45474150  # b'PAGE' read as a little-endian u32
PAGE_PATTERN_U64 = 0x4547415045474150

DUMP_SIGNATURE64 = b"PAGEDU64"
DUMP_SIGNATURE32 = b"PAGEDUMP"
DUMP_HEADER64_SIZE = 0x2000
DUMP_HEADER32_SIZE = 0x1000
MAX_RUNS64 = 42  # runs Windows and DESIGN §3 allow in PhysicalMemoryBlockBuffer (0x2C0 bytes, 0x10 head)
MAX_RUNS32 = 86



class DumpType(IntEnum):
    """DUMP_HEADER.DumpType (u32 at 0xF98 / 0xF88), as kdmp-parser's DumpType_t and DbgEng name them.

    1-6 are what Windows' crash dump driver writes; 8-10 are what current WinDbg's `.dump /ka`,
    `/k` and `/f` write (`info` summarises their 'RDMP' layout; convert refuses them by name).
    """

    FULL = 1  # complete memory dump, pages of each run back to back after the header
    KERNEL = 2  # legacy summary (kernel) dump
    TRIAGE = 4  # small memory dump / minidump
    BITMAP = 5  # 'FDMP' / 'SDMP' summary header and a page bitmap
    LIVE_KERNEL_BITMAP = 6  # live kernel dump (bitmap layout)
    KERNEL_MEMORY = 8
    KERNEL_AND_USER_MEMORY = 9
    COMPLETE_MEMORY = 10


class MachineType(IntEnum):
    """DUMP_HEADER.MachineImageType: IMAGE_FILE_MACHINE_* from the PE/COFF specification."""

    I386 = 0x014C
    AMD64 = 0x8664
    ARM64 = 0xAA64


DUMP_TYPE_FULL = int(DumpType.FULL)
DUMP_TYPE_KERNEL = int(DumpType.KERNEL)
DUMP_TYPE_TRIAGE = int(DumpType.TRIAGE)
DUMP_TYPE_BITMAP = int(DumpType.BITMAP)
DUMP_TYPE_LIVE_KERNEL_BITMAP = int(DumpType.LIVE_KERNEL_BITMAP)
DUMP_TYPE_KERNEL_MEMORY = int(DumpType.KERNEL_MEMORY)  # 'RDMP' layout (KernelMemoryDump, `.dump /k`)
DUMP_TYPE_KERNEL_AND_USER_MEMORY = int(DumpType.KERNEL_AND_USER_MEMORY)  # 'RDMP' layout (`.dump /ka`)
DUMP_TYPE_COMPLETE_MEMORY = int(DumpType.COMPLETE_MEMORY)  # 'RDMP' layout (CompleteMemoryDump, `.dump /f`)
RDMP_TYPES = (DUMP_TYPE_KERNEL_MEMORY, DUMP_TYPE_KERNEL_AND_USER_MEMORY, DUMP_TYPE_COMPLETE_MEMORY)
DUMP_TYPE_NAMES = {
    DUMP_TYPE_FULL: "full (complete memory dump)",
    DUMP_TYPE_KERNEL: "kernel (summary dump)",
    DUMP_TYPE_TRIAGE: "triage (small memory dump / minidump)",
    DUMP_TYPE_BITMAP: "bitmap",
    DUMP_TYPE_LIVE_KERNEL_BITMAP: "live kernel bitmap",
    DUMP_TYPE_KERNEL_MEMORY: "kernel memory dump ('RDMP' layout)",
    DUMP_TYPE_KERNEL_AND_USER_MEMORY: "kernel and user memory dump ('RDMP' layout)",
    DUMP_TYPE_COMPLETE_MEMORY: "complete memory dump ('RDMP' layout)",
}

MACHINE_AMD64 = int(MachineType.AMD64)
MACHINE_I386 = int(MachineType.I386)
MACHINE_ARM64 = int(MachineType.ARM64)
MACHINE_NAMES = {MACHINE_AMD64: "x64", MACHINE_I386: "x86", MACHINE_ARM64: "ARM64"}

PHYSICAL_MEMORY_RUN64 = Struct("BasePage" / Int64ul, "PageCount" / Int64ul)
PHYSICAL_MEMORY_DESCRIPTOR64_HEAD = Struct(
    "NumberOfRuns" / Int32ul,  # 0x0
    "Padding" / Int32ul,  # 0x4
    "NumberOfPages" / Int64ul,  # 0x8
)  # runs follow at 0x10
PHYSICAL_MEMORY_DESCRIPTOR64 = Struct(
    "NumberOfRuns" / Int32ul,
    "Padding" / Int32ul,
    "NumberOfPages" / Int64ul,
    "Run" / Array(lambda ctx: ctx.NumberOfRuns, PHYSICAL_MEMORY_RUN64),
)

PHYSICAL_MEMORY_RUN32 = Struct("BasePage" / Int32ul, "PageCount" / Int32ul)
PHYSICAL_MEMORY_DESCRIPTOR32_HEAD = Struct("NumberOfRuns" / Int32ul, "NumberOfPages" / Int32ul)

EXCEPTION_RECORD64 = Struct(
    "ExceptionCode" / Int32ul,  # 0x00
    "ExceptionFlags" / Int32ul,  # 0x04
    "ExceptionRecord" / Int64ul,  # 0x08
    "ExceptionAddress" / Int64ul,  # 0x10
    "NumberParameters" / Int32ul,  # 0x18
    "UnusedAlignment" / Int32ul,  # 0x1C
    "ExceptionInformation" / Array(15, Int64ul),  # 0x20
)  # 0x98

EXCEPTION_RECORD32 = Struct(
    "ExceptionCode" / Int32ul,
    "ExceptionFlags" / Int32ul,
    "ExceptionRecord" / Int32ul,
    "ExceptionAddress" / Int32ul,
    "NumberParameters" / Int32ul,
    "ExceptionInformation" / Array(15, Int32ul),
)  # 0x50

DUMP_HEADER64 = Struct(
    "Signature" / Const(b"PAGE"),  # 0x000
    "ValidDump" / Const(b"DU64"),  # 0x004
    "MajorVersion" / Int32ul,  # 0x008
    "MinorVersion" / Int32ul,  # 0x00C
    "DirectoryTableBase" / Int64ul,  # 0x010
    "PfnDataBase" / Int64ul,  # 0x018
    "PsLoadedModuleList" / Int64ul,  # 0x020
    "PsActiveProcessHead" / Int64ul,  # 0x028
    "MachineImageType" / Int32ul,  # 0x030
    "NumberProcessors" / Int32ul,  # 0x034
    "BugCheckCode" / Int32ul,  # 0x038
    "BugCheckCodePadding" / Bytes(4),  # 0x03C
    "BugCheckParameter" / Array(4, Int64ul),  # 0x040
    "VersionUser" / Bytes(32),  # 0x060
    "KdDebuggerDataBlock" / Int64ul,  # 0x080
    "PhysicalMemoryBlockBuffer" / Bytes(0x2C0),  # 0x088
    "ContextRecordBuffer" / Bytes(0xBB8),  # 0x348
    "Exception" / EXCEPTION_RECORD64,  # 0xF00
    "DumpType" / Int32ul,  # 0xF98
    "DumpTypePadding" / Bytes(4),  # 0xF9C
    "RequiredDumpSpace" / Int64ul,  # 0xFA0
    "SystemTime" / Int64ul,  # 0xFA8
    "Comment" / Bytes(128),  # 0xFB0
    "SystemUpTime" / Int64ul,  # 0x1030
    "MiniDumpFields" / Int32ul,  # 0x1038
    "SecondaryDataState" / Int32ul,  # 0x103C
    "ProductType" / Int32ul,  # 0x1040
    "SuiteMask" / Int32ul,  # 0x1044
    "WriterStatus" / Int32ul,  # 0x1048
    "Unused1" / Int8ul,  # 0x104C
    "KdSecondaryVersion" / Int8ul,  # 0x104D
    "Unused2" / Bytes(2),  # 0x104E
    "Attributes" / Int32ul,  # 0x1050
    "BootId" / Int32ul,  # 0x1054
    "Reserved0" / Bytes(DUMP_HEADER64_SIZE - 0x1058),  # 0x1058
)  # 0x2000

DUMP_HEADER32 = Struct(
    "Signature" / Const(b"PAGE"),  # 0x000
    "ValidDump" / Const(b"DUMP"),  # 0x004
    "MajorVersion" / Int32ul,  # 0x008
    "MinorVersion" / Int32ul,  # 0x00C
    "DirectoryTableBase" / Int32ul,  # 0x010
    "PfnDataBase" / Int32ul,  # 0x014
    "PsLoadedModuleList" / Int32ul,  # 0x018
    "PsActiveProcessHead" / Int32ul,  # 0x01C
    "MachineImageType" / Int32ul,  # 0x020
    "NumberProcessors" / Int32ul,  # 0x024
    "BugCheckCode" / Int32ul,  # 0x028
    "BugCheckParameter" / Array(4, Int32ul),  # 0x02C
    "VersionUser" / Bytes(32),  # 0x03C
    "PaeEnabled" / Int8ul,  # 0x05C
    "KdSecondaryVersion" / Int8ul,  # 0x05D
    "Spare3" / Bytes(2),  # 0x05E
    "KdDebuggerDataBlock" / Int32ul,  # 0x060
    "PhysicalMemoryBlockBuffer" / Bytes(700),  # 0x064
    "ContextRecordBuffer" / Bytes(1200),  # 0x320
    "Exception" / EXCEPTION_RECORD32,  # 0x7D0
    "Comment" / Bytes(128),  # 0x820
    "Attributes" / Int32ul,  # 0x8A0
    "BootId" / Int32ul,  # 0x8A4
    "Reserved0" / Bytes(1760),  # 0x8A8
    "DumpType" / Int32ul,  # 0xF88
    "MiniDumpFields" / Int32ul,  # 0xF8C
    "SecondaryDataState" / Int32ul,  # 0xF90
    "ProductType" / Int32ul,  # 0xF94
    "SuiteMask" / Int32ul,  # 0xF98
    "WriterStatus" / Int32ul,  # 0xF9C
    "RequiredDumpSpace" / Int64ul,  # 0xFA0
    "Reserved2" / Bytes(16),  # 0xFA8
    "SystemUpTime" / Int64ul,  # 0xFB8
    "SystemTime" / Int64ul,  # 0xFC0
    "Reserved3" / Bytes(56),  # 0xFC8
)  # 0x1000

# Bitmap dumps (DumpType 5 and 6): a summary header at 0x2000, the bitmap, then the present pages.
BITMAP_FULL_SIGNATURE = b"FDMP"
BITMAP_KERNEL_SIGNATURE = b"SDMP"
BITMAP_SUMMARY_HEADER_SIZE = 0x38
BITMAP_SUMMARY_HEADER = Struct(
    "Signature" / Bytes(4),  # 0x00 'FDMP' or 'SDMP'
    "ValidDump" / Const(b"DUMP"),  # 0x04
    "Padding" / Bytes(0x18),  # 0x08
    "FirstPage" / Int64ul,  # 0x20 file offset of the first present page
    "TotalPresentPages" / Int64ul,  # 0x28
    "Pages" / Int64ul,  # 0x30 number of bits in the bitmap (highest PFN + 1)
)  # bitmap at 0x38, LSB first

# DumpType 8, 9 and 10: an 'RDMP' summary at 0x2000, a list of physical page ranges, then the
# pages of those ranges back to back from FirstPageOffset. Layout as kdmp-parser reads it
# (src/lib/kdmp-parser-structs.h: RDMP_HEADER64, KERNEL_RDMP_HEADER64, FULL_RDMP_HEADER64).
RDMP_MARKER = 0x40
RDMP_SIGNATURE = b"RDMP"
RDMP_HEADER_SIZE = 0x20
RDMP_SUMMARY_SIZE = 0x30  # the page ranges start here, relative to the summary
RDMP_HEADER = Struct(
    "Marker" / Int32ul,  # 0x00 0x40
    "Signature" / Bytes(4),  # 0x04 'RDMP'
    "ValidDump" / Bytes(4),  # 0x08 'DUMP'
    "Unused" / Int32ul,  # 0x0C
    "MetadataSize" / Int64ul,  # 0x10 bytes of metadata from 0x20 on: FirstPageOffset == 0x2020 + MetadataSize
    "FirstPageOffset" / Int64ul,  # 0x18 file offset of the first page
)  # 0x20
RDMP_KERNEL_SUMMARY = Struct(  # DumpType 8 and 9
    "Header" / RDMP_HEADER,  # 0x00
    "Unknown1" / Int64ul,  # 0x20
    "Unknown2" / Int64ul,  # 0x28
)  # 0x30
RDMP_COMPLETE_SUMMARY = Struct(  # DumpType 10
    "Header" / RDMP_HEADER,  # 0x00
    "NumberOfRanges" / Int32ul,  # 0x20
    "Unknown1" / Int16ul,  # 0x24
    "Unknown2" / Int16ul,  # 0x26
    "TotalNumberOfPages" / Int64ul,  # 0x28
)  # 0x30
RDMP_PFN_RANGE = Struct("BasePage" / Int64ul, "PageCount" / Int64ul)  # 0x10 each, from summary + 0x30

# --- layout checks at import (offsets from ../shared/DESIGN.md §3, kdmp-parser's static_asserts) -----
check_layout("PHYSICAL_MEMORY_RUN64", PHYSICAL_MEMORY_RUN64, 0x10)
check_layout("PHYSICAL_MEMORY_DESCRIPTOR64_HEAD", PHYSICAL_MEMORY_DESCRIPTOR64_HEAD, 0x10, {"NumberOfPages": 0x8})
check_layout("PHYSICAL_MEMORY_RUN32", PHYSICAL_MEMORY_RUN32, 0x8)
check_layout("PHYSICAL_MEMORY_DESCRIPTOR32_HEAD", PHYSICAL_MEMORY_DESCRIPTOR32_HEAD, 0x8)
check_layout("EXCEPTION_RECORD64", EXCEPTION_RECORD64, 0x98, {"NumberParameters": 0x18, "ExceptionInformation": 0x20})
check_layout("EXCEPTION_RECORD32", EXCEPTION_RECORD32, 0x50)
check_layout("DUMP_HEADER64", DUMP_HEADER64, DUMP_HEADER64_SIZE, {
    "MajorVersion": 0x8, "DirectoryTableBase": 0x10, "PfnDataBase": 0x18, "PsLoadedModuleList": 0x20,
    "PsActiveProcessHead": 0x28, "MachineImageType": 0x30, "NumberProcessors": 0x34, "BugCheckCode": 0x38,
    "BugCheckParameter": 0x40, "KdDebuggerDataBlock": 0x80, "PhysicalMemoryBlockBuffer": 0x88,
    "ContextRecordBuffer": 0x348, "Exception": 0xF00, "DumpType": 0xF98, "RequiredDumpSpace": 0xFA0,
    "SystemTime": 0xFA8, "Comment": 0xFB0, "SystemUpTime": 0x1030, "MiniDumpFields": 0x1038,
    "SecondaryDataState": 0x103C, "ProductType": 0x1040, "SuiteMask": 0x1044, "WriterStatus": 0x1048,
    "KdSecondaryVersion": 0x104D, "Attributes": 0x1050, "BootId": 0x1054,
})
check_layout("DUMP_HEADER32", DUMP_HEADER32, DUMP_HEADER32_SIZE, {
    "KdDebuggerDataBlock": 0x60, "PhysicalMemoryBlockBuffer": 0x64, "ContextRecordBuffer": 0x320,
    "Exception": 0x7D0, "DumpType": 0xF88, "RequiredDumpSpace": 0xFA0, "SystemUpTime": 0xFB8, "SystemTime": 0xFC0,
})
check_layout("BITMAP_SUMMARY_HEADER", BITMAP_SUMMARY_HEADER, BITMAP_SUMMARY_HEADER_SIZE,
             {"FirstPage": 0x20, "TotalPresentPages": 0x28, "Pages": 0x30})
if 0x10 + MAX_RUNS64 * 0x10 > 0x2C0 or 0x8 + MAX_RUNS32 * 0x8 > 700:
    raise AssertionError("MAX_RUNS64 / MAX_RUNS32 runs do not fit in PhysicalMemoryBlockBuffer")
