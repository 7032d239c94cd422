"""Symbol tables of the Windows x64 kernels the generator imitates: one base table plus per-build overrides.

The values come from the volatility3 ISF tables of the real ntkrnlmp.pdb of each build
(JPCERTCC/Windows-Symbol-Tables; ../shared/samples/isf holds the five files, absent on a fresh clone, so
they are never read at run time). tests/unit/testkit/test_offsets_isf.py checks every value here against those
files when they are present. Keys are "<type>.<field>" (offsets, bytes), "<type>" (sizes, bytes) and symbol
names (``rvas``: symbol address minus the kernel base, bytes), as the PDB names them.

``BASE_OFFSETS``/``BASE_SIZES`` hold what most (at least three of the five) builds share; each ``Table``
lists only what differs in that build (``offsets``, ``sizes``), the base fields its PDB lacks (``absent``)
and all its symbol RVAs (every kernel build moves every symbol). On 7601 and 9600 the PDB has no
_KLDR_DATA_TABLE_ENTRY: the values used for it there are those of _LDR_DATA_TABLE_ENTRY, whose first
fields are laid out the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    """One kernel build's overrides of the base table, with its identity (PDB, version, KDBG shape)."""

    build: int
    name: str
    nt_version: tuple[int, int]  # (NtMajorVersion, NtMinorVersion)
    kdbg_size: int  # KDDEBUGGER_DATA64 Header.Size this build writes (bytes)
    kdbg_encoded: bool  # Windows 8+ keep the KDBG encoded in memory (KdpDataBlockEncoded)
    pdb_guid: str
    nt_build_lab: str
    offsets: dict[str, int] = field(repr=False)  # fields at another offset than BASE_OFFSETS, or not in it
    sizes: dict[str, int] = field(repr=False)  # types of another size than BASE_SIZES, or not in it
    rvas: dict[str, int] = field(repr=False)
    absent: tuple[str, ...] = ()  # BASE_OFFSETS fields this build's PDB does not have


BASE_OFFSETS: dict[str, int] = {
    "_KPCR.GdtBase": 0x0, "_KPCR.TssBase": 0x8, "_KPCR.UserRsp": 0x10, "_KPCR.Self": 0x18, "_KPCR.CurrentPrcb": 0x20,
    "_KPCR.IdtBase": 0x38, "_KPCR.Irql": 0x50, "_KPCR.KdVersionBlock": 0x108, "_KPCR.Prcb": 0x180,
    "_KPRCB.CurrentThread": 0x8, "_KPRCB.NextThread": 0x10, "_KPRCB.IdleThread": 0x18, "_KPRCB.Number": 0x24,
    "_KPRCB.ProcessorState": 0x40, "_KPRCB.CpuType": 0x5f0, "_KPRCB.MHz": 0x5f4,
    "_KPROCESSOR_STATE.SpecialRegisters": 0x0, "_KPROCESSOR_STATE.ContextFrame": 0xe0, "_KSPECIAL_REGISTERS.Cr0": 0x0,
    "_KSPECIAL_REGISTERS.Cr2": 0x8, "_KSPECIAL_REGISTERS.Cr3": 0x10, "_KSPECIAL_REGISTERS.Cr4": 0x18,
    "_KSPECIAL_REGISTERS.KernelDr0": 0x20, "_KSPECIAL_REGISTERS.Gdtr": 0x50, "_KSPECIAL_REGISTERS.Idtr": 0x60,
    "_KSPECIAL_REGISTERS.Tr": 0x70, "_KSPECIAL_REGISTERS.Ldtr": 0x72, "_KSPECIAL_REGISTERS.MxCsr": 0x74,
    "_KSPECIAL_REGISTERS.MsrGsBase": 0xa8, "_KSPECIAL_REGISTERS.MsrGsSwap": 0xb0, "_KDESCRIPTOR.Limit": 0x6,
    "_KDESCRIPTOR.Base": 0x8, "_EPROCESS.Pcb": 0x0, "_KPROCESS.DirectoryTableBase": 0x28,
    "_KTHREAD.InitialStack": 0x28, "_KTHREAD.StackLimit": 0x30, "_KTHREAD.StackBase": 0x38,
    "_KTHREAD.KernelStack": 0x58, "_KTHREAD.ApcState": 0x98, "_KTHREAD.Teb": 0xf0, "_KTHREAD.State": 0x184,
    "_KTHREAD.QueueListEntry": 0x208, "_KTHREAD.NextProcessor": 0x218, "_KTHREAD.WaitReason": 0x283,
    "_KTHREAD.Process": 0x220, "_KAPC_STATE.Process": 0x20, "_KUSER_SHARED_DATA.TickCountMultiplier": 0x4,
    "_KUSER_SHARED_DATA.InterruptTime": 0x8, "_KUSER_SHARED_DATA.SystemTime": 0x14,
    "_KUSER_SHARED_DATA.TimeZoneBias": 0x20, "_KUSER_SHARED_DATA.NtProductType": 0x264,
    "_KUSER_SHARED_DATA.ProductTypeIsValid": 0x268, "_KUSER_SHARED_DATA.NtMajorVersion": 0x26c,
    "_KUSER_SHARED_DATA.NtMinorVersion": 0x270, "_KUSER_SHARED_DATA.SuiteMask": 0x2d0,
    "_KUSER_SHARED_DATA.KdDebuggerEnabled": 0x2d4, "_KLDR_DATA_TABLE_ENTRY.InLoadOrderLinks": 0x0,
    "_KLDR_DATA_TABLE_ENTRY.DllBase": 0x30, "_KLDR_DATA_TABLE_ENTRY.EntryPoint": 0x38,
    "_KLDR_DATA_TABLE_ENTRY.SizeOfImage": 0x40, "_KLDR_DATA_TABLE_ENTRY.FullDllName": 0x48,
    "_KLDR_DATA_TABLE_ENTRY.BaseDllName": 0x58, "_KLDR_DATA_TABLE_ENTRY.Flags": 0x68,
    "_KLDR_DATA_TABLE_ENTRY.LoadCount": 0x6c, "_KUSER_SHARED_DATA.NtBuildNumber": 0x260,
}
BASE_SIZES: dict[str, int] = {
    "_KPCR": 0x8040, "_KPRCB": 0x7ec0, "_KPROCESSOR_STATE": 0x5b0, "_CONTEXT": 0x4d0, "_KLDR_DATA_TABLE_ENTRY": 0xa0,
}


TABLES: tuple[Table, ...] = (
    Table(
        7601, "Windows 7 SP1 / 2008 R2 SP1", nt_version=(6, 1), kdbg_size=0x340, kdbg_encoded=False,
        pdb_guid="339E74133576439CBCDF7E0229DA3773", nt_build_lab="7601.24540.amd64fre.win7sp1_ldr_escrow.200102-1707",
        offsets={
            "_KPRCB.Context": 0x53e0, "_KPRCB.ContextFlags": 0x53e8, "_KPRCB.VendorString": 0x53b8,
            "_KPRCB.DpcStack": 0x21c0, "_KPRCB.NormalDpcState": 0x21dc, "_KPRCB.DpcRoutineActive": 0x21da,
            "_EPROCESS.UniqueProcessId": 0x180, "_EPROCESS.ActiveProcessLinks": 0x188,
            "_EPROCESS.ImageFileName": 0x2e0, "_EPROCESS.Peb": 0x338, "_EPROCESS.InheritedFromUniqueProcessId": 0x290,
            "_EPROCESS.ThreadListHead": 0x308, "_KTHREAD.StackBase": 0x278, "_KTHREAD.KernelStack": 0x38,
            "_KTHREAD.ApcState": 0x50, "_KTHREAD.Teb": 0xb8, "_KTHREAD.State": 0x164,
            "_KTHREAD.QueueListEntry": 0x1c8, "_KTHREAD.NextProcessor": 0x7c, "_KTHREAD.WaitReason": 0x26b,
            "_KTHREAD.Process": 0x210, "_ETHREAD.Cid": 0x3b8, "_ETHREAD.IrpList": 0x3f0,
            "_ETHREAD.ThreadListEntry": 0x428,
        },
        absent=("_KLDR_DATA_TABLE_ENTRY.LoadCount", "_KUSER_SHARED_DATA.NtBuildNumber"),
        sizes={
            "_KPCR": 0x7080, "_KPRCB": 0x6f00, "_KSPECIAL_REGISTERS": 0xd8, "_EPROCESS": 0x4f8, "_KPROCESS": 0x160,
            "_ETHREAD": 0x4a8, "_KTHREAD": 0x368, "_KUSER_SHARED_DATA": 0x5f0, "_KLDR_DATA_TABLE_ENTRY": 0xe0,
        },
        rvas={
            "KdDebuggerDataBlock": 0x1e2130, "KdVersionBlock": 0x1e20e8, "KdpDataBlockEncoded": 0x1ffd1b,
            "KdpDebuggerDataListHead": 0x200610, "KiWaitNever": 0x29d130, "KiWaitAlways": 0x29d218,
            "KiBugCheckData": 0x266780, "PsLoadedModuleList": 0x239c90, "PsActiveProcessHead": 0x21b940,
            "PspCidTable": 0x21b988, "MmPfnDatabase": 0x29d280, "MmHighestPhysicalPage": 0x29d118,
            "MmPhysicalMemoryBlock": 0x29d038, "KiProcessorBlock": 0x29dcc0, "KeLoaderBlock": 0x29d110,
            "KeNumberProcessors": 0x29d018, "NtBuildLab": 0xa150, "NtBuildNumber": 0xa14c,
            "PsInitialSystemProcess": 0x29d028, "KdDebuggerEnabled": 0x26d9f0, "KdDebuggerNotPresent": 0x26d9f1,
            "KdPrintCircularBuffer": 0x1e2118, "MmUnloadedDrivers": 0x29d1f0, "KeTimeIncrement": 0x29d0b4,
            "KiBugCheckActive": 0x20c7a4, "ObpRootDirectoryObject": 0x21c590, "MmNumberOfPhysicalPages": 0x29d080,
            "MmLowestPhysicalPage": 0x29d310, "MmHighestUserAddress": 0x29d010, "MmSystemRangeStart": 0x29d100,
            "MmUserProbeAddress": 0x29d000, "KeBugCheckEx": 0x93ea0, "KiIdleLoop": 0x973d0,
            "KiDivideErrorFault": 0x9cf00, "KiPageFault": 0x9fc80, "KdCopyDataBlock": 0xdbd50,
            "KeCapturePersistentThreadState": 0x17b670, "MmGetPhysicalMemoryRanges": 0x440410,
            "KiSystemStartup": 0x2a2ae0,
        },
    ),
    Table(
        9600, "Windows 8.1 / Server 2012 R2", nt_version=(6, 3), kdbg_size=0x360, kdbg_encoded=True,
        pdb_guid="22597D0B40394E23936F6A24C6C52D5B", nt_build_lab="9600.19913.amd64fre.winblue_ltsb_escrow.201202-1800",
        offsets={
            "_KPRCB.Context": 0x6180, "_KPRCB.ContextFlagsInit": 0x6188, "_KPRCB.VendorString": 0x6158,
            "_KPRCB.DpcStack": 0x2dd0, "_KPRCB.IsrStack": 0x6198, "_KPRCB.NormalDpcState": 0x2dec,
            "_KPRCB.DpcRoutineActive": 0x2dea, "_EPROCESS.UniqueProcessId": 0x2e0,
            "_EPROCESS.ActiveProcessLinks": 0x2e8, "_EPROCESS.ImageFileName": 0x438, "_EPROCESS.Peb": 0x3e8,
            "_EPROCESS.InheritedFromUniqueProcessId": 0x3d0, "_EPROCESS.ThreadListHead": 0x470, "_ETHREAD.Cid": 0x620,
            "_ETHREAD.IrpList": 0x658, "_ETHREAD.ThreadListEntry": 0x688,
        },
        absent=("_KLDR_DATA_TABLE_ENTRY.LoadCount", "_KUSER_SHARED_DATA.NtBuildNumber"),
        sizes={
            "_KSPECIAL_REGISTERS": 0xe0, "_EPROCESS": 0x700, "_KPROCESS": 0x2c8, "_ETHREAD": 0x778, "_KTHREAD": 0x5d0,
            "_KUSER_SHARED_DATA": 0x5f0, "_KLDR_DATA_TABLE_ENTRY": 0x118,
        },
        rvas={
            "KdDebuggerDataBlock": 0x292530, "KdVersionBlock": 0x292e58, "KdpDataBlockEncoded": 0x29e448,
            "KdpDebuggerDataListHead": 0x2dc3b8, "KiWaitNever": 0x34f548, "KiWaitAlways": 0x34fa40,
            "KiBugCheckData": 0x2cc940, "PsLoadedModuleList": 0x2c55d0, "PsActiveProcessHead": 0x2ab320,
            "PspCidTable": 0x34f1e8, "MmPfnDatabase": 0x34f0f8, "MmHighestPhysicalPage": 0x34f0f0,
            "MmPhysicalMemoryBlock": 0x34f108, "KiProcessorBlock": 0x34fd80, "KeLoaderBlock": 0x34f0d8,
            "KeNumberProcessors": 0x34f018, "NtBuildLab": 0x2620, "NtBuildNumber": 0x1b638,
            "PsInitialSystemProcess": 0x34f028, "KdDebuggerEnabled": 0x2ce6a0, "KdDebuggerNotPresent": 0x2ce6a1,
            "KdPrintCircularBuffer": 0x29cb40, "MmUnloadedDrivers": 0x34f238, "KeTimeIncrement": 0x34f064,
            "KiBugCheckActive": 0x2cc920, "ObpRootDirectoryObject": 0x2acbf0, "MmNumberOfPhysicalPages": 0x34f068,
            "MmLowestPhysicalPage": 0x34f310, "MmHighestUserAddress": 0x34f010, "MmSystemRangeStart": 0x34f138,
            "MmUserProbeAddress": 0x34f000, "KeBugCheckEx": 0x1404c0, "KiIdleLoop": 0x144180,
            "KiDivideErrorFault": 0x14ab00, "KiPageFault": 0x14d880, "KdCopyDataBlock": 0x1b21e0,
            "KeCapturePersistentThreadState": 0x1a9a18, "MmGetPhysicalMemoryRanges": 0x427298,
            "KiSystemStartup": 0x362010,
        },
    ),
    Table(
        14393, "Windows 10 1607 / Server 2016", nt_version=(10, 0), kdbg_size=0x368, kdbg_encoded=True,
        pdb_guid="517E128F7B7C4EA79491DE6B9B9CE190", nt_build_lab="14393.0.amd64fre.rs1_release.160715-1616",
        offsets={
            "_KPRCB.Context": 0x6300, "_KPRCB.ContextFlagsInit": 0x6308, "_KPRCB.VendorString": 0x62d8,
            "_KPRCB.DpcStack": 0x2dd0, "_KPRCB.IsrStack": 0x6318, "_KPRCB.NormalDpcState": 0x2dec,
            "_KPRCB.DpcRoutineActive": 0x2dea, "_EPROCESS.UniqueProcessId": 0x2e8,
            "_EPROCESS.ActiveProcessLinks": 0x2f0, "_EPROCESS.ImageFileName": 0x450, "_EPROCESS.Peb": 0x3f8,
            "_EPROCESS.InheritedFromUniqueProcessId": 0x3e0, "_EPROCESS.ThreadListHead": 0x488, "_ETHREAD.Cid": 0x630,
            "_ETHREAD.IrpList": 0x668, "_ETHREAD.ThreadListEntry": 0x698,
        },
        sizes={
            "_KSPECIAL_REGISTERS": 0xe0, "_EPROCESS": 0x7c8, "_KPROCESS": 0x2d8, "_ETHREAD": 0x7e0, "_KTHREAD": 0x5e0,
            "_KUSER_SHARED_DATA": 0x708,
        },
        rvas={
            "KdDebuggerDataBlock": 0x2ef900, "KdVersionBlock": 0x2f1df0, "KdpDataBlockEncoded": 0x33f108,
            "KdpDebuggerDataListHead": 0x319b20, "KiWaitNever": 0x3a7530, "KiWaitAlways": 0x3a76b8,
            "KiBugCheckData": 0x30aba0, "PsLoadedModuleList": 0x304060, "PsActiveProcessHead": 0x2fe410,
            "PspCidTable": 0x3a73a0, "MmPfnDatabase": 0x3a72b0, "MmPhysicalMemoryBlock": 0x3a72e0,
            "KiProcessorBlock": 0x3a83c0, "KeLoaderBlock": 0x3a72a8, "KeNumberProcessors": 0x3a7244,
            "NtBuildLab": 0x25d0a0, "NtBuildNumber": 0x27c178, "PsInitialSystemProcess": 0x3a7258,
            "KdDebuggerEnabled": 0x30b486, "KdDebuggerNotPresent": 0x30b487, "KdPrintCircularBuffer": 0x2f1478,
            "MmUnloadedDrivers": 0x304080, "KeTimeIncrement": 0x3a7294, "KiBugCheckActive": 0x30ab80,
            "ObpRootDirectoryObject": 0x301df0, "MmHighestUserAddress": 0x275d68, "MmSystemRangeStart": 0x275d60,
            "MmUserProbeAddress": 0x275d70, "KeBugCheckEx": 0x15d580, "KiIdleLoop": 0x160b80,
            "KiDivideErrorFault": 0x167400, "KiPageFault": 0x16a340, "KdCopyDataBlock": 0x1cee94,
            "KeCapturePersistentThreadState": 0x1c5fdc, "MmGetPhysicalMemoryRanges": 0x5001f4,
            "KiSystemStartup": 0x3c5010,
        },
    ),
    Table(
        17763, "Windows 10 1809 / Server 2019", nt_version=(10, 0), kdbg_size=0x380, kdbg_encoded=True,
        pdb_guid="8B11040A5928757B11390AC78F6B6925", nt_build_lab="17763.1.amd64fre.rs5_release.180914-1434",
        offsets={
            "_KPRCB.ProcessorState": 0x100, "_KPRCB.Context": 0x62c0, "_KPRCB.ContextFlagsInit": 0x62c8,
            "_KPRCB.CpuType": 0x40, "_KPRCB.MHz": 0x44, "_KPRCB.VendorString": 0x6290, "_KPRCB.DpcStack": 0x2e50,
            "_KPRCB.IsrStack": 0x62d8, "_KPRCB.NormalDpcState": 0x2e6c, "_KPRCB.DpcRoutineActive": 0x2e6a,
            "_KPROCESSOR_STATE.ContextFrame": 0xf0, "_EPROCESS.UniqueProcessId": 0x2e0,
            "_EPROCESS.ActiveProcessLinks": 0x2e8, "_EPROCESS.ImageFileName": 0x450, "_EPROCESS.Peb": 0x3f8,
            "_EPROCESS.InheritedFromUniqueProcessId": 0x3e0, "_EPROCESS.ThreadListHead": 0x488, "_ETHREAD.Cid": 0x638,
            "_ETHREAD.IrpList": 0x670, "_ETHREAD.ThreadListEntry": 0x6a8,
        },
        sizes={
            "_KPROCESSOR_STATE": 0x5c0, "_KSPECIAL_REGISTERS": 0xf0, "_EPROCESS": 0x850, "_KPROCESS": 0x2d8,
            "_ETHREAD": 0x810, "_KTHREAD": 0x5f0, "_KUSER_SHARED_DATA": 0x710,
        },
        rvas={
            "KdDebuggerDataBlock": 0x3ff5e0, "KdVersionBlock": 0x402dc0, "KdpDataBlockEncoded": 0x43d7f8,
            "KdpDebuggerDataListHead": 0x431810, "KiWaitNever": 0x543668, "KiWaitAlways": 0x543868,
            "KiBugCheckData": 0x422620, "PsLoadedModuleList": 0x41b9f0, "PsActiveProcessHead": 0x40f650,
            "PspCidTable": 0x543438, "MmPfnDatabase": 0x543390, "MmPhysicalMemoryBlock": 0x543378,
            "KiProcessorBlock": 0x544d80, "KeLoaderBlock": 0x543320, "KeNumberProcessors": 0x5432c4,
            "NtBuildLab": 0x4394c0, "NtBuildNumber": 0x372c48, "PsInitialSystemProcess": 0x5432e0,
            "KdDebuggerEnabled": 0x434080, "KdDebuggerNotPresent": 0x434081, "KdPrintCircularBuffer": 0x4022a8,
            "MmUnloadedDrivers": 0x41b978, "KeTimeIncrement": 0x543310, "KiBugCheckActive": 0x422600,
            "ObpRootDirectoryObject": 0x41a798, "MmHighestUserAddress": 0x369a48, "MmSystemRangeStart": 0x369a38,
            "MmUserProbeAddress": 0x369a40, "KeBugCheckEx": 0x1b35e0, "KiIdleLoop": 0x1b6fa0,
            "KiDivideErrorFault": 0x1bdc00, "KiPageFault": 0x1c0d40, "KdCopyDataBlock": 0x28a1b8,
            "KeCapturePersistentThreadState": 0x280da0, "MmGetPhysicalMemoryRanges": 0x73efa0,
            "KiSystemStartup": 0x565010,
        },
    ),
    Table(
        19041, "Windows 10 2004/20H2", nt_version=(10, 0), kdbg_size=0x380, kdbg_encoded=True,
        pdb_guid="5278AFF86C341677D7D7835C85B7B844", nt_build_lab="19041.1.amd64fre.vb_release.191206-1406",
        offsets={
            "_KPRCB.ProcessorState": 0x100, "_KPRCB.Context": 0x85c0, "_KPRCB.ContextFlagsInit": 0x85c8,
            "_KPRCB.CpuType": 0x40, "_KPRCB.MHz": 0x44, "_KPRCB.VendorString": 0x8590, "_KPRCB.DpcStack": 0x3110,
            "_KPRCB.IsrStack": 0x85d8, "_KPRCB.NormalDpcState": 0x312c, "_KPRCB.DpcRoutineActive": 0x312a,
            "_KPROCESSOR_STATE.ContextFrame": 0xf0, "_EPROCESS.UniqueProcessId": 0x440,
            "_EPROCESS.ActiveProcessLinks": 0x448, "_EPROCESS.ImageFileName": 0x5a8, "_EPROCESS.Peb": 0x550,
            "_EPROCESS.InheritedFromUniqueProcessId": 0x540, "_EPROCESS.ThreadListHead": 0x5e0, "_ETHREAD.Cid": 0x478,
            "_ETHREAD.IrpList": 0x4b0, "_ETHREAD.ThreadListEntry": 0x4e8,
        },
        sizes={
            "_KPCR": 0xb080, "_KPRCB": 0xaf00, "_KPROCESSOR_STATE": 0x5c0, "_KSPECIAL_REGISTERS": 0xf0,
            "_EPROCESS": 0xa40, "_KPROCESS": 0x438, "_ETHREAD": 0x898, "_KTHREAD": 0x430, "_KUSER_SHARED_DATA": 0x720,
        },
        rvas={
            "KdDebuggerDataBlock": 0xc00b20, "KdVersionBlock": 0xc0f330, "KdpDataBlockEncoded": 0xc50ba0,
            "KdpDebuggerDataListHead": 0xc40770, "KiWaitNever": 0xcfc7f8, "KiWaitAlways": 0xcfc9f8,
            "KiBugCheckData": 0xc31480, "PsLoadedModuleList": 0xc2a390, "PsActiveProcessHead": 0xc1e200,
            "PspCidTable": 0xcfc5c8, "MmPfnDatabase": 0xcfc500, "MmPhysicalMemoryBlock": 0xcfc4a8,
            "KiProcessorBlock": 0xcfdc80, "KeLoaderBlock": 0xcfc460, "KeNumberProcessors": 0xcfc404,
            "NtBuildLab": 0xc4c1a0, "NtBuildNumber": 0xc11ee0, "PsInitialSystemProcess": 0xcfc420,
            "KdDebuggerEnabled": 0xc320f5, "KdDebuggerNotPresent": 0xc42fe0, "KdPrintCircularBuffer": 0xc04e60,
            "MmUnloadedDrivers": 0xc2a308, "KeTimeIncrement": 0xcfc468, "KiBugCheckActive": 0xc31460,
            "ObpRootDirectoryObject": 0xc251f0, "MmHighestUserAddress": 0x21440, "MmSystemRangeStart": 0x21448,
            "MmUserProbeAddress": 0x21438, "KeBugCheckEx": 0x3f5a80, "KiIdleLoop": 0x3f9550,
            "KiDivideErrorFault": 0x400500, "KiPageFault": 0x403900, "KdCopyDataBlock": 0x50a6c8,
            "KeCapturePersistentThreadState": 0x4fefd0, "MmGetPhysicalMemoryRanges": 0x7b7080,
            "KiSystemStartup": 0x98b010,
        },
    ),
)
