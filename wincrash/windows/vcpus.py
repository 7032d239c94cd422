"""Which vCPU note holds which Windows processor's registers, and which notes are Hyper-V's, not NT's.

QEMU writes one register note per vCPU. Under Hyper-V (a Windows root partition with VBS) a vCPU
may have been running the hypervisor when the dump was taken: its note then holds hvix64's
registers (its own CR3, IDT and GS), and NT's registers for that processor exist only in the
KPRCB.ProcessorState Windows saved. Notes are matched to processors by GS base = KPCR (KPCR.Prcb
at +0x180 on every x64 build) under a CR3 that maps KUSER_SHARED_DATA; a note that fails that and
whose IDT handler lies in a hypervisor image is classified as in hypervisor context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from construct import Container

from wincrash.memory.qemu_elf import cpu_mode
from wincrash.memory.source import PhysicalSource
from wincrash.windows.kdbg import KdbgBlock
from wincrash.windows.kernel import KernelView, SecureKernel, idt_handler, images_around_idt_handler
from wincrash.windows.offsets import KPCR_PRCB_OFFSET
from wincrash.windows.paging import KUSER_SHARED_DATA_VA, AddressSpace, cr3_base
from wincrash.windows.pe import PeImage, is_hypervisor_pdb

MAX_PROCESSORS = 2048  # KiProcessorBlock entries read at most
# Distinct (CR3, IDT) pairs whose IDT handler is searched for a hypervisor image (each search scans up to
# 64 MiB below the handler): a Hyper-V host's notes share the hypervisor's image, so once one is found the
# rest are matched against it; past this many fruitless searches the remaining notes stay unmatched.
MAX_HYPERVISOR_SEARCHES = 16
REGISTERS_FROM_NOTE = "qemu-note"
REGISTERS_NONE = "none (no matching vCPU note)"
KPCR_SELF_OFFSET = 0x18  # KPCR.Self (every x64 build, windows/offsets.py)
KPCR_CURRENT_PRCB_OFFSET = 0x20  # KPCR.CurrentPrcb
KPRCB_NUMBER_OFFSET = 0x24  # KPRCB.Number (u32)


@dataclass(frozen=True)
class CpuFacts:
    """One processor as the dump will describe it.

    ``number``: index in KiProcessorBlock. Addresses are kernel virtual (``*_va``) or physical
    (``context_pa``): ``kprcb`` the KPRCB, ``context_va`` the CONTEXT buffer KPRCB.Context points at
    (where WinDbg reads the processor's registers), ``proc_state_context_va`` KPRCB.ProcessorState.
    ContextFrame (Windows' own saved context). ``note_index``: which QEMU vCPU note holds its
    registers (None: none does). ``register_source``: what the analysis found for its registers.
    """

    number: int
    kprcb: int
    note_index: int | None
    context_va: int | None = None
    context_pa: int | None = None
    proc_state_context_va: int | None = None
    register_source: str = REGISTERS_FROM_NOTE


@dataclass(frozen=True)
class HyperV:
    """A Hyper-V hypervisor image seen through some vCPU notes, and the VBS secure kernel if one was met."""

    hypervisor: PeImage
    cpus_in_hypervisor_context: tuple[int, ...]  # vCPU note indexes
    secure_kernel: SecureKernel | None

    def to_dict(self) -> dict[str, Any]:
        """The --json view (addresses as hex strings)."""
        hv = self.hypervisor
        return {
            "detected": True,
            "hypervisor": {"pdb": hv.pdb_name, "base": hex(hv.base), "size": hex(hv.size_of_image),
                           "pdb_guid": hv.pdb_guid, "pdb_age": hv.pdb_age},
            "cpus_in_hypervisor_context": list(self.cpus_in_hypervisor_context),
            "secure_kernel": None if self.secure_kernel is None else self.secure_kernel.to_dict(),
        }


@dataclass(frozen=True)
class VcpuClasses:
    """The vCPU notes sorted out: ``nt_note_for`` maps processor number -> note index for notes in NT
    context; ``in_hypervisor`` lists note indexes in hypervisor context; ``hypervisor`` is the first
    hypervisor image found (None when no note was in a hypervisor)."""

    nt_note_for: Mapping[int, int]
    in_hypervisor: tuple[int, ...]
    hypervisor: PeImage | None


@dataclass(frozen=True)
class Processors:
    """What KiProcessorBlock and the vCPU notes say: one CpuFacts per processor, in processor order.

    ``method`` is None when KiProcessorBlock gave no processor; ``warnings`` are for the user.
    """

    cpus: tuple[CpuFacts, ...]
    hyperv: HyperV | None
    method: str | None
    warnings: tuple[str, ...]


def hypervisor_of(read: Callable[[int, int], bytes], cpu: Container) -> PeImage | None:
    """The hypervisor image a long-mode vCPU was running in, found through its own CR3 and IDT; else None."""
    if cpu_mode(cpu) != "long":
        return None
    space = AddressSpace(read, cr3_base(cpu.cr[3]))
    image = next(images_around_idt_handler(space, cpu.idt.base, want_exports=False), None)
    return image if image is not None and is_hypervisor_pdb(image.pdb_name) else None


def classify_vcpus(source: PhysicalSource, kprcbs: Sequence[int]) -> VcpuClasses:
    """Match each vCPU note to a processor (``kprcbs``: KPRCB address per processor number) or a hypervisor.

    A note is NT's when its KPCR (GS base in kernel mode, KernelGSBase in user mode) + KPCR.Prcb is a
    known KPRCB and its CR3 maps KUSER_SHARED_DATA; otherwise it is the hypervisor's when its IDT
    handler lies in hvix64/hvax64. Notes that are neither, and notes not in long mode, are left unmatched.
    """
    by_kprcb = {kprcb: n for n, kprcb in enumerate(kprcbs)}
    note_for: dict[int, int] = {}
    in_hypervisor: list[int] = []
    hv_image: PeImage | None = None
    maps_kuser: dict[int, bool] = {}  # CR3 -> maps KUSER_SHARED_DATA (notes share a handful of CR3s)
    searched: dict[tuple[int, int], PeImage | None] = {}  # (CR3, IDT base) -> hypervisor image found
    for i, cpu in enumerate(source.cpus):
        if cpu_mode(cpu) != "long":
            continue  # reset, INIT or real mode: neither NT's nor the hypervisor's registers
        kpcr = cpu.gs.base if cpu.cs.selector & 3 == 0 else cpu.kernel_gs_base
        n = by_kprcb.get(kpcr + KPCR_PRCB_OFFSET)
        cr3 = cr3_base(cpu.cr[3])
        if n is not None:
            if cr3 not in maps_kuser:
                maps_kuser[cr3] = AddressSpace(source.read, cr3).translate(KUSER_SHARED_DATA_VA) is not None
            if maps_kuser[cr3]:
                note_for[n] = i
                continue
        image = _hypervisor_cached(source, cpu, hv_image, searched)
        if image is not None:
            in_hypervisor.append(i)
            hv_image = hv_image or image
    return VcpuClasses(MappingProxyType(note_for), tuple(in_hypervisor), hv_image)


def _hypervisor_cached(source: PhysicalSource, cpu: Container, known: PeImage | None,
                       searched: dict[tuple[int, int], PeImage | None]) -> PeImage | None:
    """hypervisor_of, linear in the notes: a known hypervisor image containing the note's IDT handler is
    taken without a search, a (CR3, IDT) pair is searched once, and at most MAX_HYPERVISOR_SEARCHES are."""
    key = (cr3_base(cpu.cr[3]), cpu.idt.base)
    if key in searched:
        return searched[key]
    if known is not None:
        handler = idt_handler(AddressSpace(source.read, key[0]), cpu.idt.base)
        if handler is not None and known.contains(handler):
            searched[key] = known
            return known
    if len(searched) >= MAX_HYPERVISOR_SEARCHES:
        return None
    searched[key] = hypervisor_of(source.read, cpu)
    return searched[key]


def check_kprcb(space: AddressSpace, kprcb: int | None, index: int) -> str | None:
    """Why KiProcessorBlock[``index``] = ``kprcb`` is not processor ``index``'s KPRCB; None when it is.

    A KPRCB lies at KPCR + 0x180 (KPCR.Prcb); its KPCR points at itself (KPCR.Self, +0x18) and at
    the KPRCB (KPCR.CurrentPrcb, +0x20), and KPRCB.Number (+0x24) is the processor's index: the same
    on every x64 build from Windows 7 to 11 (windows/offsets.py).
    """
    if not kprcb:
        return "is zero" if kprcb == 0 else "is not readable"
    kpcr = kprcb - KPCR_PRCB_OFFSET
    if space.read_u64(kpcr + KPCR_SELF_OFFSET) != kpcr:
        return f"0x{kprcb:x}: KPCR.Self does not point at its KPCR"
    if space.read_u64(kpcr + KPCR_CURRENT_PRCB_OFFSET) != kprcb:
        return f"0x{kprcb:x}: KPCR.CurrentPrcb does not point at it"
    raw = space.read(kprcb + KPRCB_NUMBER_OFFSET, 4)
    number = None if raw is None else int.from_bytes(raw, "little")
    if number != index:
        return f"0x{kprcb:x}: KPRCB.Number is {number}, not {index}"
    return None


def read_kprcbs(space: AddressSpace, kdbg: KdbgBlock) -> tuple[list[int], str]:
    """The KPRCBs of KiProcessorBlock up to the first entry that fails check_kprcb, and why it stopped."""
    blocks: list[int] = []
    for i in range(MAX_PROCESSORS):
        value = space.read_u64(kdbg.ki_processor_block + 8 * i)
        # Into the entries read so far (the entry itself included); a KPRCB may follow the array in .data.
        if value is not None and kdbg.ki_processor_block <= value < kdbg.ki_processor_block + 8 * (i + 1):
            return blocks, f"entry {i} 0x{value:x} points into KiProcessorBlock itself"
        if value in blocks:
            return blocks, f"entry {i} 0x{value:x} repeats entry {blocks.index(value)}"
        reason = check_kprcb(space, value, i)
        if reason is not None:
            return blocks, f"entry {i} {reason}"
        blocks.append(value)  # type: ignore[arg-type]  # check_kprcb refused None
    return blocks, f"{MAX_PROCESSORS} entries read"


def exported_processor_count(kernel: KernelView) -> int | None:
    """KeNumberProcessors (ntoskrnl's export, a 32-bit count); None when unexported, unreadable or absurd."""
    rva = kernel.image.exports.get("KeNumberProcessors")
    raw = kernel.space.read(kernel.image.base + rva, 4) if rva else None
    value = None if raw is None else int.from_bytes(raw, "little")
    return value if value is not None and 1 <= value <= MAX_PROCESSORS else None


def processor_count(validated: int, exported: int | None, notes: int) -> tuple[int, str, list[str]]:
    """(how many processors the dump describes, which source won and why, warnings).

    KiProcessorBlock's validated entries are the processors whose KPRCB can be read; KeNumberProcessors
    is Windows' own count and wins when it is smaller (entries past it are not processors); the
    number of long-mode vCPU notes is a cross-check only (a note can be missing or the hypervisor's).
    """
    warnings = []
    count, winner = validated, f"{validated} validated KiProcessorBlock entries"
    if exported is not None and exported < validated:
        count, winner = exported, f"KeNumberProcessors ({exported})"
    if exported is None:
        winner += "; KeNumberProcessors not readable"
    elif exported != validated:
        used = "KeNumberProcessors" if count == exported else "KiProcessorBlock"
        warnings.append(f"KeNumberProcessors says {exported} processors but KiProcessorBlock has {validated} "
                        f"valid entries: {count} used ({used})")
    else:
        winner += ", agrees with KeNumberProcessors"
    if notes and notes != count:
        warnings.append(f"{notes} vCPU notes but {count} processors in Windows ({winner})")
    elif notes:
        winner += " and the vCPU notes"
    return count, winner, warnings


def read_processors(source: PhysicalSource, kernel: KernelView, kdbg: KdbgBlock) -> Processors:
    """KiProcessorBlock's KPRCBs, each validated (check_kprcb) and matched to its vCPU note and CONTEXT buffers.

    The count is cross-checked against KeNumberProcessors and the vCPU notes (processor_count);
    ``method`` says which source won. Notes are matched by GS base (classify_vcpus); when none
    matches, no note is a hypervisor's and there are as many long-mode notes as processors, they are
    taken in order. A note of a vCPU not in long mode (reset, INIT, real mode) is never matched:
    its registers are not Windows'.
    """
    space = kernel.space
    blocks, stop = read_kprcbs(space, kdbg)
    if not blocks:
        return Processors((), None, None, (f"KiProcessorBlock {stop}: no processor contexts written",))
    count, winner, warnings = processor_count(len(blocks), exported_processor_count(kernel), len(source.cpus))
    if "itself" in stop or "repeats" in stop:
        warnings.insert(0, f"KiProcessorBlock {stop}: inconsistent, the processors from there on are left out")
    blocks = blocks[:count]
    classes = classify_vcpus(source, blocks)
    note_for: Mapping[int, int] = classes.nt_note_for
    matched_by_gs = bool(note_for)
    long_mode = [i for i, c in enumerate(source.cpus) if cpu_mode(c) == "long"]
    if not matched_by_gs and not classes.in_hypervisor and len(long_mode) == len(source.cpus) == len(blocks):
        note_for = {n: n for n in range(len(blocks))}
    how = ("vCPU GS base = KPCR" if matched_by_gs else "vCPU order" if note_for else "no vCPU notes")
    cpus = []
    for n, kprcb in enumerate(blocks):
        ctx_va = space.read_u64(kprcb + kdbg.offset_prcb_context) if kdbg.offset_prcb_context else None
        note = note_for.get(n)
        cpus.append(CpuFacts(
            number=n, kprcb=kprcb, note_index=note, context_va=ctx_va,
            context_pa=space.translate(ctx_va) if ctx_va else None,
            proc_state_context_va=kprcb + kdbg.offset_prcb_proc_state_context
            if kdbg.offset_prcb_proc_state_context else None,
            register_source=REGISTERS_FROM_NOTE if note is not None else REGISTERS_NONE))
    if classes.in_hypervisor:
        warnings.append(f"Hyper-V detected: vCPU note(s) {', '.join(map(str, classes.in_hypervisor))} hold the "
                        "hypervisor's registers, not Windows': those processors' contexts come from "
                        "KPRCB.ProcessorState")
    long_set = set(long_mode)
    not_long = [i for i in range(len(source.cpus)) if i not in long_set]
    if not_long:
        warnings.append(f"vCPU note(s) {', '.join(map(str, not_long))} are not in long mode (reset, INIT or real "
                        "mode): their registers are not Windows'; those processors' contexts come from "
                        "KPRCB.ProcessorState")
    hyperv = None if classes.hypervisor is None else HyperV(classes.hypervisor, classes.in_hypervisor,
                                                            kernel.secure_kernel)
    return Processors(tuple(cpus), hyperv, f"{how}; {len(cpus)} processors from {winner} (KiProcessorBlock "
                      f"{stop})", tuple(warnings))
