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
from wincrash.windows.kernel import KernelView, SecureKernel, images_around_idt_handler
from wincrash.windows.offsets import KPCR_PRCB_OFFSET
from wincrash.windows.paging import KUSER_SHARED_DATA_VA, AddressSpace, cr3_base
from wincrash.windows.pe import PeImage, is_hypervisor_pdb

MAX_PROCESSORS = 2048  # KiProcessorBlock entries read at most
REGISTERS_FROM_NOTE = "qemu-note"
REGISTERS_NONE = "none (no matching vCPU note)"


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
    handler lies in hvix64/hvax64. Notes that are neither are left unmatched.
    """
    by_kprcb = {kprcb: n for n, kprcb in enumerate(kprcbs)}
    note_for: dict[int, int] = {}
    in_hypervisor: list[int] = []
    hv_image: PeImage | None = None
    for i, cpu in enumerate(source.cpus):
        kpcr = cpu.gs.base if cpu.cs.selector & 3 == 0 else cpu.kernel_gs_base
        n = by_kprcb.get(kpcr + KPCR_PRCB_OFFSET)
        if n is not None and AddressSpace(source.read, cr3_base(cpu.cr[3])).translate(KUSER_SHARED_DATA_VA) \
                is not None:
            note_for[n] = i
            continue
        image = hypervisor_of(source.read, cpu)
        if image is not None:
            in_hypervisor.append(i)
            hv_image = hv_image or image
    return VcpuClasses(MappingProxyType(note_for), tuple(in_hypervisor), hv_image)


def read_processors(source: PhysicalSource, kernel: KernelView, kdbg: KdbgBlock) -> Processors:
    """KiProcessorBlock's KPRCBs, each matched to its vCPU note and CONTEXT buffers.

    Notes are matched by GS base (classify_vcpus); when none matches, no note is a hypervisor's and
    there are as many notes as processors, they are taken in order.
    """
    space = kernel.space
    blocks = []
    for i in range(MAX_PROCESSORS):
        value = space.read_u64(kdbg.ki_processor_block + 8 * i)
        if not value:
            break
        blocks.append(value)
    if not blocks:
        return Processors((), None, None, ("KiProcessorBlock is empty or unreadable: no processor contexts written",))
    classes = classify_vcpus(source, blocks)
    note_for: Mapping[int, int] = classes.nt_note_for
    matched_by_gs = bool(note_for)
    if not matched_by_gs and not classes.in_hypervisor and len(source.cpus) == len(blocks):
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
    warnings = []
    if classes.in_hypervisor:
        warnings.append(f"Hyper-V detected: vCPU note(s) {', '.join(map(str, classes.in_hypervisor))} hold the "
                        "hypervisor's registers, not Windows': those processors' contexts come from "
                        "KPRCB.ProcessorState")
    if len(source.cpus) and len(source.cpus) != len(blocks):
        warnings.append(f"{len(source.cpus)} vCPU notes but {len(blocks)} processors in KiProcessorBlock")
    hyperv = None if classes.hypervisor is None else HyperV(classes.hypervisor, classes.in_hypervisor,
                                                            kernel.secure_kernel)
    return Processors(tuple(cpus), hyperv, f"{how}, {len(blocks)} in KiProcessorBlock", tuple(warnings))
