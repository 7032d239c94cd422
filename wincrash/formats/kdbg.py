"""KDDEBUGGER_DATA64 (the "KDBG", 0x380 bytes) and DBGKD_GET_VERSION64 (KdVersionBlock, 0x28 bytes).

Both come from the Windows SDK's wdbgexts.h. The KDBG's fields hold ADDRESSES of kernel variables
(KernBase, PsLoadedModuleList, ...) or structure offsets (Offset*/Size* fields, u16). Windows 8 and
later keep it encoded in memory; these definitions describe the plain (decoded) block. Older builds
use a shorter block (Header.Size says how much is meaningful: 0x340 on Windows 7 SP1) but the field
offsets never move, so one definition serves all. Pure data: no I/O.
"""

from __future__ import annotations

from construct import Int8ul, Int16ul, Int32ul, Int64ul, Struct

from wincrash.formats.layout import check_layout

KDBG_OWNER_TAG = b"KDBG"
KDDEBUGGER_DATA64_SIZE = 0x380
DBGKD_GET_VERSION64_SIZE = 0x28
DBGKD_MAJOR_FREE_BUILD = 0xF  # MajorVersion of a free (retail) build
IMAGE_FILE_MACHINE_AMD64 = 0x8664

LIST_ENTRY64 = Struct("Flink" / Int64ul, "Blink" / Int64ul)

DBGKD_DEBUG_DATA_HEADER64 = Struct(
    "List" / LIST_ENTRY64,  # 0x00
    "OwnerTag" / Int32ul,  # 0x10: 'KDBG' little-endian
    "Size" / Int32ul,  # 0x14
)  # 0x18

# u64 address fields from KernBase (0x18) to MmVirtualTranslationBase (0x290), in order.
_U64_0x18 = ("KernBase", "BreakpointWithStatus", "SavedContext")
_U64_0x38 = (
    "KiCallUserMode", "KeUserCallbackDispatcher", "PsLoadedModuleList", "PsActiveProcessHead", "PspCidTable",
    "ExpSystemResourcesList", "ExpPagedPoolDescriptor", "ExpNumberOfPagedPools", "KeTimeIncrement",
    "KeBugCheckCallbackListHead", "KiBugcheckData", "IopErrorLogListHead", "ObpRootDirectoryObject",
    "ObpTypeObjectType", "MmSystemCacheStart", "MmSystemCacheEnd", "MmSystemCacheWs", "MmPfnDatabase",
    "MmSystemPtesStart", "MmSystemPtesEnd", "MmSubsectionBase", "MmNumberOfPagingFiles", "MmLowestPhysicalPage",
    "MmHighestPhysicalPage", "MmNumberOfPhysicalPages", "MmMaximumNonPagedPoolInBytes", "MmNonPagedSystemStart",
    "MmNonPagedPoolStart", "MmNonPagedPoolEnd", "MmPagedPoolStart", "MmPagedPoolEnd", "MmPagedPoolInformation",
    "MmPageSize", "MmSizeOfPagedPoolInBytes", "MmTotalCommitLimit", "MmTotalCommittedPages", "MmSharedCommit",
    "MmDriverCommit", "MmProcessCommit", "MmPagedPoolCommit", "MmExtendedCommit", "MmZeroedPageListHead",
    "MmFreePageListHead", "MmStandbyPageListHead", "MmModifiedPageListHead", "MmModifiedNoWritePageListHead",
    "MmAvailablePages", "MmResidentAvailablePages", "PoolTrackTable", "NonPagedPoolDescriptor",
    "MmHighestUserAddress", "MmSystemRangeStart", "MmUserProbeAddress", "KdPrintCircularBuffer",
    "KdPrintCircularBufferEnd", "KdPrintWritePointer", "KdPrintRolloverCount", "MmLoadedUserImageList",
    "NtBuildLab", "KiNormalSystemCall", "KiProcessorBlock", "MmUnloadedDrivers", "MmLastUnloadedDriver",
    "MmTriageActionTaken", "MmSpecialPoolTag", "KernelVerifier", "MmVerifierData", "MmAllocatedNonPagedPool",
    "MmPeakCommitment", "MmTotalCommitLimitMaximum", "CmNtCSDVersion", "MmPhysicalMemoryBlock", "MmSessionBase",
    "MmSessionSize", "MmSystemParentTablePage", "MmVirtualTranslationBase",
)
# u16 offset/size fields from 0x298 to 0x2C0.
_U16_0x298 = (
    "OffsetKThreadNextProcessor", "OffsetKThreadTeb", "OffsetKThreadKernelStack", "OffsetKThreadInitialStack",
    "OffsetKThreadApcProcess", "OffsetKThreadState", "OffsetKThreadBStore", "OffsetKThreadBStoreLimit",
    "SizeEProcess", "OffsetEprocessPeb", "OffsetEprocessParentCID", "OffsetEprocessDirectoryTableBase",
    "SizePrcb", "OffsetPrcbDpcRoutine", "OffsetPrcbCurrentThread", "OffsetPrcbMhz", "OffsetPrcbCpuType",
    "OffsetPrcbVendorString", "OffsetPrcbProcStateContext", "OffsetPrcbNumber", "SizeEThread",
)
# u16 fields from 0x2E0 to 0x308.
_U16_0x2E0 = (
    "SizePcr", "OffsetPcrSelfPcr", "OffsetPcrCurrentPrcb", "OffsetPcrContainedPrcb", "OffsetPcrInitialBStore",
    "OffsetPcrBStoreLimit", "OffsetPcrInitialStack", "OffsetPcrStackLimit", "OffsetPrcbPcrPage",
    "OffsetPrcbProcStateSpecialReg", "GdtR0Code", "GdtR0Data", "GdtR0Pcr", "GdtR3Code", "GdtR3Data", "GdtR3Teb",
    "GdtLdt", "GdtTss", "Gdt64R3CmCode", "Gdt64R3CmTeb",
)
_U64_0x308 = ("IopNumTriageDumpDataBlocks", "IopTriageDumpDataBlocks", "VfCrashDataBlock", "MmBadPagesDetected",
              "MmZeroedPageSingleBitErrorsDetected", "EtwpDebuggerData")
_U16_0x338 = ("OffsetPrcbContext", "OffsetPrcbMaxBreakpoints", "OffsetPrcbMaxWatchpoints")
_U16_0x350 = ("OffsetPrcbIdleThread", "OffsetPrcbNormalDpcState", "OffsetPrcbDpcStack", "OffsetPrcbIsrStack",
              "SizeKDPC_STACK_FRAME", "OffsetKPriQueueThreadListHead", "OffsetKThreadWaitReason", "Padding1")

KDDEBUGGER_DATA64 = Struct(
    "Header" / DBGKD_DEBUG_DATA_HEADER64,  # 0x000
    *[name / Int64ul for name in _U64_0x18],  # 0x018
    "ThCallbackStack" / Int16ul,  # 0x030
    "NextCallback" / Int16ul,  # 0x032
    "FramePointer" / Int16ul,  # 0x034
    "PaeEnabled" / Int16ul,  # 0x036 (bit 0)
    *[name / Int64ul for name in _U64_0x38],  # 0x038 .. 0x290
    *[name / Int16ul for name in _U16_0x298],  # 0x298 .. 0x2C0
    "L1tfHighPhysicalBitIndex" / Int8ul,  # 0x2C2
    "L1tfSwizzleBitIndex" / Int8ul,  # 0x2C3
    "Padding0" / Int32ul,  # 0x2C4
    "KdPrintCircularBufferPtr" / Int64ul,  # 0x2C8
    "KdPrintBufferSize" / Int64ul,  # 0x2D0
    "KeLoaderBlock" / Int64ul,  # 0x2D8
    *[name / Int16ul for name in _U16_0x2E0],  # 0x2E0 .. 0x306
    *[name / Int64ul for name in _U64_0x308],  # 0x308 .. 0x330
    *[name / Int16ul for name in _U16_0x338],  # 0x338 .. 0x33C
    "Padding2" / Int16ul,  # 0x33E
    "OffsetKThreadStackLimit" / Int32ul,  # 0x340
    "OffsetKThreadStackBase" / Int32ul,  # 0x344
    "OffsetKThreadQueueListEntry" / Int32ul,  # 0x348
    "OffsetEThreadIrpList" / Int32ul,  # 0x34C
    *[name / Int16ul for name in _U16_0x350],  # 0x350 .. 0x35E
    "PteBase" / Int64ul,  # 0x360
    "RetpolineStubFunctionTable" / Int64ul,  # 0x368
    "RetpolineStubFunctionTableSize" / Int32ul,  # 0x370
    "RetpolineStubOffset" / Int32ul,  # 0x374
    "RetpolineStubSize" / Int32ul,  # 0x378
    "OffsetEProcessMmHotPatchContext" / Int16ul,  # 0x37C
    "Padding3" / Int16ul,  # 0x37E
)  # 0x380

KDDEBUGGER_DATA64_FIELD_NAMES: tuple[str, ...] = tuple(
    sc.name for sc in KDDEBUGGER_DATA64.subcons if sc.name and sc.name != "Header"
)

DBGKD_GET_VERSION64 = Struct(
    "MajorVersion" / Int16ul,  # 0x00: 0xF free build, 0xC checked build
    "MinorVersion" / Int16ul,  # 0x02: build number
    "ProtocolVersion" / Int8ul,  # 0x04
    "KdSecondaryVersion" / Int8ul,  # 0x05: 2 = current AMD64 CONTEXT
    "Flags" / Int16ul,  # 0x06: DBGKD_VERS_FLAG_*
    "MachineType" / Int16ul,  # 0x08: 0x8664
    "MaxPacketType" / Int8ul,  # 0x0A
    "MaxStateChange" / Int8ul,  # 0x0B
    "MaxManipulate" / Int8ul,  # 0x0C
    "Simulation" / Int8ul,  # 0x0D
    "Unused" / Int16ul,  # 0x0E
    "KernBase" / Int64ul,  # 0x10
    "PsLoadedModuleList" / Int64ul,  # 0x18
    "DebuggerDataList" / Int64ul,  # 0x20: &KdpDebuggerDataListHead
)  # 0x28

DBGKD_VERS_FLAG_MP = 0x1
DBGKD_VERS_FLAG_DATA = 0x2
DBGKD_VERS_FLAG_PTR64 = 0x4
DBGKD_VERS_FLAG_NOMM = 0x8
DBGKD_VERS_FLAG_HSS = 0x10
DBGKD_VERS_FLAG_PARTITIONS = 0x20
DBGKD_VERS_FLAG_HAL_IN_NTOS = 0x40

# --- layout checks at import (wdbgexts.h; ../shared/DESIGN.md §3) ---------------------------------
check_layout("DBGKD_DEBUG_DATA_HEADER64", DBGKD_DEBUG_DATA_HEADER64, 0x18, {"OwnerTag": 0x10, "Size": 0x14})
check_layout("KDDEBUGGER_DATA64", KDDEBUGGER_DATA64, KDDEBUGGER_DATA64_SIZE, {
    "KernBase": 0x18, "PsLoadedModuleList": 0x48, "PsActiveProcessHead": 0x50, "PspCidTable": 0x58,
    "KiBugcheckData": 0x88, "MmPfnDatabase": 0xC0, "MmHighestPhysicalPage": 0xF0, "KdPrintCircularBuffer": 0x1E0,
    "NtBuildLab": 0x208, "KiProcessorBlock": 0x218, "MmUnloadedDrivers": 0x220, "MmPhysicalMemoryBlock": 0x270,
    "OffsetKThreadNextProcessor": 0x298, "SizeEProcess": 0x2A8, "SizePrcb": 0x2B0, "OffsetPrcbCurrentThread": 0x2B4,
    "OffsetPrcbProcStateContext": 0x2BC, "OffsetPrcbNumber": 0x2BE, "KeLoaderBlock": 0x2D8, "SizePcr": 0x2E0,
    "IopNumTriageDumpDataBlocks": 0x308, "OffsetPrcbContext": 0x338, "OffsetKThreadStackLimit": 0x340,
    "OffsetPrcbIdleThread": 0x350, "PteBase": 0x360, "OffsetEProcessMmHotPatchContext": 0x37C,
})
check_layout("DBGKD_GET_VERSION64", DBGKD_GET_VERSION64, DBGKD_GET_VERSION64_SIZE, {
    "MinorVersion": 0x2, "KdSecondaryVersion": 0x5, "MachineType": 0x8, "KernBase": 0x10,
    "PsLoadedModuleList": 0x18, "DebuggerDataList": 0x20,
})
