"""KDDEBUGGER_DATA64 (the KDBG, encoded with KiWaitNever/KiWaitAlways from Windows 8 on) and KdVersionBlock."""

from __future__ import annotations

import struct

from construct import Container

from wincrash.formats.kdbg import DBGKD_GET_VERSION64, KDDEBUGGER_DATA64, KDDEBUGGER_DATA64_FIELD_NAMES
from wincrash_testkit.synth import kdbg_codec
from wincrash_testkit.synth.builds import kdbg_offset_fields
from wincrash_testkit.synth.paging import pte_base
from wincrash_testkit.synth.state import Builder


def debugger_data(b: Builder) -> None:
    """Fill the KDBG as the kernel does (list head, named addresses, Offset* fields), store it encoded."""
    wb, rng, s = b.wb, b.rng, b.space
    kdbg_va = b.sym("KdDebuggerDataBlock")
    list_head = b.sym("KdpDebuggerDataListHead")
    s.write(list_head, struct.pack("<QQ", kdbg_va, kdbg_va))
    data_sec = next(x for x in b.sections if x.name == ".data")
    blk = KDDEBUGGER_DATA64.parse(bytes(KDDEBUGGER_DATA64.sizeof()))
    for name in KDDEBUGGER_DATA64_FIELD_NAMES:  # every address field: somewhere plausible in .data
        sub = next(sc for sc in KDDEBUGGER_DATA64.subcons if sc.name == name)
        if sub.sizeof() == 8 and not name.startswith(("Padding", "Retpoline")):
            blk[name] = b.kern_base + ((data_sec.rva + rng.randrange(data_sec.vsize - 8)) & ~7)
    blk.Header = Container(List=Container(Flink=list_head, Blink=list_head),
                           OwnerTag=int.from_bytes(b"KDBG", "little"), Size=wb.kdbg_size)
    named = {"KernBase": b.kern_base, "BreakpointWithStatus": b.sym("KeBugCheckEx") - 0x40,
             "KiCallUserMode": b.sym("KiIdleLoop") - 0x200,
             "PsLoadedModuleList": b.sym("PsLoadedModuleList"),
             "PsActiveProcessHead": b.sym("PsActiveProcessHead"), "PspCidTable": b.sym("PspCidTable"),
             "KeTimeIncrement": b.sym("KeTimeIncrement"), "KiBugcheckData": b.sym("KiBugCheckData"),
             "ObpRootDirectoryObject": b.sym("ObpRootDirectoryObject"),
             "MmPfnDatabase": b.sym("MmPfnDatabase"), "MmHighestPhysicalPage": b.highest_page_var,
             "MmHighestUserAddress": b.sym("MmHighestUserAddress"),
             "MmSystemRangeStart": b.sym("MmSystemRangeStart"),
             "MmUserProbeAddress": b.sym("MmUserProbeAddress"),
             "KdPrintCircularBuffer": b.sym("KdPrintCircularBuffer"), "NtBuildLab": b.sym("NtBuildLab"),
             "KiProcessorBlock": b.sym("KiProcessorBlock"), "MmUnloadedDrivers": b.sym("MmUnloadedDrivers"),
             "MmPhysicalMemoryBlock": b.sym("MmPhysicalMemoryBlock"), "KeLoaderBlock": b.sym("KeLoaderBlock"),
             "PaeEnabled": 1}
    for name in ("MmLowestPhysicalPage", "MmNumberOfPhysicalPages"):
        named[name] = b.sym(name) if name in wb.rvas else b.extra(8)
    s.write_u64(named["MmNumberOfPhysicalPages"], b.layout.windows_pages)
    s.write_u64(named["MmLowestPhysicalPage"], b.layout.windows_runs[0][0])
    named.update(kdbg_offset_fields(wb))
    if wb.kdbg_size > 0x360:
        named["PteBase"] = pte_base(b.self_ref)
    for name, value in named.items():
        blk[name] = value
    for name in ("RetpolineStubFunctionTable", "Padding0", "Padding1", "Padding2", "Padding3"):
        blk[name] = 0
    plain_full = KDDEBUGGER_DATA64.build(blk)
    plain = plain_full[:wb.kdbg_size]
    wait_never, wait_always = rng.getrandbits(64), rng.getrandbits(64)
    encoded_flag = b.sym("KdpDataBlockEncoded")
    s.write_u64(b.sym("KiWaitNever"), wait_never)
    s.write_u64(b.sym("KiWaitAlways"), wait_always)
    s.write(encoded_flag, b"\x01" if wb.kdbg_encoded else b"\x00")
    stored = kdbg_codec.encode_block(plain, wait_never, wait_always, encoded_flag) if wb.kdbg_encoded else plain
    s.write(kdbg_va, stored)
    # KdVersionBlock
    version_va = b.sym("KdVersionBlock")
    s.write(version_va, DBGKD_GET_VERSION64.build(dict(
        MajorVersion=0xF, MinorVersion=b.spec.build, ProtocolVersion=6, KdSecondaryVersion=2,
        Flags=0x7, MachineType=0x8664, MaxPacketType=0xC, MaxStateChange=3, MaxManipulate=0x33, Simulation=0,
        Unused=0, KernBase=b.kern_base, PsLoadedModuleList=b.sym("PsLoadedModuleList"),
        DebuggerDataList=list_head)))
    b.truth["kdbg"] = {
        "va": kdbg_va, "pa": s.pa(kdbg_va), "size": wb.kdbg_size, "encoded": wb.kdbg_encoded,
        "plain_hex": plain.hex(), "stored_hex": stored.hex(), "wait_never": wait_never,
        "wait_always": wait_always, "block_encoded_va": encoded_flag, "list_head": list_head,
        "fields": {k: v for k, v in named.items()}}
    b.truth["kd_version_block"] = {"va": version_va, "pa": s.pa(version_va)}
