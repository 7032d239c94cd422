"""The kernel builds the generator imitates: base table + per-build overrides merged, and what derives from them.

Every value comes from wincrash_testkit.synth.symbols (real ntkrnlmp.pdb symbol tables); the KDBG Offset*/
Size* fields are derived from those offsets the way the kernel fills them (checked against a real 19041
triage dump's KDBG by tests/unit/testkit/test_offsets_isf.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wincrash_testkit.synth.symbols import BASE_OFFSETS, BASE_SIZES, TABLES, Table

KUSER_SHARED_DATA_VA = 0xFFFFF78000000000  # fixed on every x64 Windows (ntddk.h KI_USER_SHARED_DATA)


@dataclass(frozen=True)
class WindowsBuild:
    """One kernel build, with its complete tables: offsets/sizes in bytes, rvas relative to the kernel base."""

    build: int
    name: str
    nt_major: int
    nt_minor: int
    kdbg_size: int  # KDDEBUGGER_DATA64 Header.Size this build writes
    kdbg_encoded: bool  # Windows 8+ keep the KDBG encoded in memory
    pdb_guid: str
    pdb_age: int
    nt_build_lab: str
    offsets: dict[str, int] = field(repr=False)
    sizes: dict[str, int] = field(repr=False)
    rvas: dict[str, int] = field(repr=False)

    def off(self, key: str) -> int:
        """Offset of "<type>.<field>"; KeyError names the build when this kernel has no such field."""
        try:
            return self.offsets[key]
        except KeyError:
            raise KeyError(f"{key} not known for build {self.build}") from None

    @property
    def prcb_context_flags_key(self) -> str:
        """KPRCB.ContextFlags on Windows 7, renamed ContextFlagsInit from Windows 8."""
        return "_KPRCB.ContextFlags" if "_KPRCB.ContextFlags" in self.offsets else "_KPRCB.ContextFlagsInit"


def merge(table: Table) -> WindowsBuild:
    """The complete tables of one build: the base with the build's overrides applied and absent fields removed."""
    offsets = {k: v for k, v in BASE_OFFSETS.items() if k not in table.absent}
    offsets.update(table.offsets)
    return WindowsBuild(build=table.build, name=table.name, nt_major=table.nt_version[0],
                        nt_minor=table.nt_version[1], kdbg_size=table.kdbg_size, kdbg_encoded=table.kdbg_encoded,
                        pdb_guid=table.pdb_guid, pdb_age=1, nt_build_lab=table.nt_build_lab, offsets=offsets,
                        sizes={**BASE_SIZES, **table.sizes}, rvas=dict(table.rvas))


BUILDS: dict[int, WindowsBuild] = {table.build: merge(table) for table in TABLES}


def get_build(build: int) -> WindowsBuild:
    """The table for one build; ValueError lists the known builds."""
    try:
        return BUILDS[build]
    except KeyError:
        raise ValueError(f"unknown Windows build {build}; known: {', '.join(map(str, BUILDS))}") from None


# KDDEBUGGER_DATA64 fields after offset 0x340: absent from the shorter Windows 7 block.
_AFTER_0x340 = frozenset({
    "OffsetKThreadStackLimit", "OffsetKThreadStackBase", "OffsetKThreadQueueListEntry", "OffsetEThreadIrpList",
    "OffsetPrcbIdleThread", "OffsetPrcbNormalDpcState", "OffsetPrcbDpcStack", "OffsetPrcbIsrStack",
    "OffsetKThreadWaitReason",
})


def kdbg_offset_fields(wb: WindowsBuild) -> dict[str, int]:
    """The Offset*/Size*/Gdt* fields of KDDEBUGGER_DATA64 as this build's kernel fills them (from the table)."""
    o = wb.offsets
    fields = {
        "OffsetKThreadNextProcessor": o["_KTHREAD.NextProcessor"],
        "OffsetKThreadTeb": o["_KTHREAD.Teb"],
        "OffsetKThreadKernelStack": o["_KTHREAD.KernelStack"],
        "OffsetKThreadInitialStack": o["_KTHREAD.InitialStack"],
        "OffsetKThreadApcProcess": o["_KTHREAD.ApcState"] + o["_KAPC_STATE.Process"],
        "OffsetKThreadState": o["_KTHREAD.State"],
        "SizeEProcess": wb.sizes["_EPROCESS"],
        "OffsetEprocessPeb": o["_EPROCESS.Peb"],
        "OffsetEprocessParentCID": o["_EPROCESS.InheritedFromUniqueProcessId"],
        "OffsetEprocessDirectoryTableBase": o["_KPROCESS.DirectoryTableBase"],
        "SizePrcb": wb.sizes["_KPRCB"],
        "OffsetPrcbDpcRoutine": o["_KPRCB.DpcRoutineActive"],
        "OffsetPrcbCurrentThread": o["_KPRCB.CurrentThread"],
        "OffsetPrcbMhz": o["_KPRCB.MHz"],
        "OffsetPrcbCpuType": o["_KPRCB.CpuType"],
        "OffsetPrcbVendorString": o["_KPRCB.VendorString"],
        "OffsetPrcbProcStateContext": o["_KPRCB.ProcessorState"] + o["_KPROCESSOR_STATE.ContextFrame"],
        "OffsetPrcbNumber": o["_KPRCB.Number"],
        "SizeEThread": wb.sizes["_ETHREAD"],
        "SizePcr": wb.sizes["_KPCR"],
        "OffsetPcrSelfPcr": o["_KPCR.Self"],
        "OffsetPcrCurrentPrcb": o["_KPCR.CurrentPrcb"],
        "OffsetPcrContainedPrcb": o["_KPCR.Prcb"],
        "OffsetPrcbProcStateSpecialReg": o["_KPRCB.ProcessorState"] + o["_KPROCESSOR_STATE.SpecialRegisters"],
        "GdtR0Code": 0x10, "GdtR0Data": 0x18, "GdtR0Pcr": 0x50, "GdtR3Code": 0x30, "GdtR3Data": 0x28,
        "GdtR3Teb": 0x50, "GdtLdt": 0, "GdtTss": 0x40, "Gdt64R3CmCode": 0x20, "Gdt64R3CmTeb": 0x50,
        "OffsetPrcbContext": o["_KPRCB.Context"],
        "OffsetKThreadStackLimit": o["_KTHREAD.StackLimit"],
        "OffsetKThreadStackBase": o["_KTHREAD.StackBase"],
        "OffsetKThreadQueueListEntry": o["_KTHREAD.QueueListEntry"],
        "OffsetEThreadIrpList": o["_ETHREAD.IrpList"],
        "OffsetPrcbIdleThread": o["_KPRCB.IdleThread"],
        "OffsetPrcbNormalDpcState": o["_KPRCB.NormalDpcState"],
        "OffsetPrcbDpcStack": o["_KPRCB.DpcStack"],
        "OffsetKThreadWaitReason": o["_KTHREAD.WaitReason"],
    }
    if "_KPRCB.IsrStack" in o:
        fields["OffsetPrcbIsrStack"] = o["_KPRCB.IsrStack"]
    if wb.kdbg_size <= 0x340:  # fields after 0x340 do not exist in the shorter Windows 7 block
        fields = {k: v for k, v in fields.items() if k not in _AFTER_0x340}
    return fields
