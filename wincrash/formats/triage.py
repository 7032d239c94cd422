"""Triage (small memory) dump sub-header, DumpType 4, at file offset 0x2000 of a DUMP_HEADER64 file.

Only what `wincrash info` needs: where the driver list, string pool and the embedded plain
KDDEBUGGER_DATA64 copy are. Offsets are absolute file offsets. Checked against a real Windows 10
triage dump (../shared/samples/real/triage_x64.dmp).
"""

from __future__ import annotations

from construct import Bytes, Int32ul, Int64ul, Struct

from wincrash.formats.layout import check_layout

TRIAGE_VALID = b"TRGD"  # stored at ValidOffset

TRIAGE_DUMP64 = Struct(
    "ServicePackBuild" / Int32ul,  # 0x00
    "SizeOfDump" / Int32ul,  # 0x04
    "ValidOffset" / Int32ul,  # 0x08
    "ContextOffset" / Int32ul,  # 0x0C
    "ExceptionOffset" / Int32ul,  # 0x10
    "MmOffset" / Int32ul,  # 0x14
    "UnloadedDriversOffset" / Int32ul,  # 0x18
    "PrcbOffset" / Int32ul,  # 0x1C
    "ProcessOffset" / Int32ul,  # 0x20
    "ThreadOffset" / Int32ul,  # 0x24
    "CallStackOffset" / Int32ul,  # 0x28
    "SizeOfCallStack" / Int32ul,  # 0x2C
    "DriverListOffset" / Int32ul,  # 0x30
    "DriverCount" / Int32ul,  # 0x34
    "StringPoolOffset" / Int32ul,  # 0x38
    "StringPoolSize" / Int32ul,  # 0x3C
    "BrokenDriverOffset" / Int32ul,  # 0x40
    "TriageOptions" / Int32ul,  # 0x44
    "TopOfStack" / Int64ul,  # 0x48
    "ArchitectureSpecific" / Bytes(0x10),  # 0x50 (IA64 backing store; unused on x64)
    "DataPageAddress" / Int64ul,  # 0x60
    "DataPageOffset" / Int32ul,  # 0x68
    "DataPageSize" / Int32ul,  # 0x6C
    "DebuggerDataOffset" / Int32ul,  # 0x70
    "DebuggerDataSize" / Int32ul,  # 0x74
    "DataBlocksOffset" / Int32ul,  # 0x78
    "DataBlocksCount" / Int32ul,  # 0x7C
)  # 0x80

# One loaded driver: the offset of its DUMP_STRING name, then a KLDR_DATA_TABLE_ENTRY copy.
DUMP_DRIVER_ENTRY64_SIZE = 0x90
DUMP_DRIVER_ENTRY64 = Struct(
    "DriverNameOffset" / Int32ul,  # 0x00 file offset of a DUMP_STRING
    "Padding" / Int32ul,  # 0x04
    "InLoadOrderLinks" / Bytes(16),  # 0x08 (KLDR_DATA_TABLE_ENTRY starts here)
    "ExceptionTable" / Int64ul,  # 0x18
    "ExceptionTableSize" / Int32ul,  # 0x20
    "Padding2" / Int32ul,  # 0x24
    "GpValue" / Int64ul,  # 0x28
    "NonPagedDebugInfo" / Int64ul,  # 0x30
    "DllBase" / Int64ul,  # 0x38
    "EntryPoint" / Int64ul,  # 0x40
    "SizeOfImage" / Int32ul,  # 0x48
    "Rest" / Bytes(DUMP_DRIVER_ENTRY64_SIZE - 0x4C),
)  # 0x90 (the KLDR_DATA_TABLE_ENTRY copy is 0x88 bytes)

# DUMP_STRING: u32 length in UTF-16 code units, then the characters (and a terminating NUL).
DUMP_STRING_HEAD = Struct("Length" / Int32ul)

TRIAGE_DATA_BLOCK64 = Struct("Address" / Int64ul, "Offset" / Int32ul, "Size" / Int32ul)  # 0x10

# --- layout checks at import (checked against ../shared/samples/real/triage_x64.dmp) --------------
check_layout("TRIAGE_DUMP64", TRIAGE_DUMP64, 0x80, {"DriverListOffset": 0x30, "DataPageAddress": 0x60,
                                                    "DebuggerDataOffset": 0x70, "DataBlocksCount": 0x7C})
check_layout("DUMP_DRIVER_ENTRY64", DUMP_DRIVER_ENTRY64, DUMP_DRIVER_ENTRY64_SIZE, {"DllBase": 0x38,
                                                                                    "SizeOfImage": 0x48})
check_layout("TRIAGE_DATA_BLOCK64", TRIAGE_DATA_BLOCK64, 0x10)
