"""The Hyper-V root-partition variant of the synthetic guest: what QEMU's dump of an L1 guest running Hyper-V holds.

With the Hyper-V role on, Windows is the root partition: the vCPUs QEMU sees are often in the hypervisor
(hvix64.exe) when the dump is taken, so their QEMU notes hold the hypervisor's CR3, GS base and IDT, none of
which lead to NT. Hyper-V takes its memory from the top of the root's RAM (Windows' MmPhysicalMemoryBlock no
longer covers it), and with VBS the secure kernel (securekernel.exe) lives in a VTL1 address space of its own,
also outside NT's runs: a Windows-looking decoy (self-reference slot, a KUSER-like page) without ntoskrnl.
Windows itself keeps each CPU's NT state in KPRCB.ProcessorState (SpecialRegisters + ContextFrame), which is
where a converter must take the NT context of a CPU caught in the hypervisor.

The generator takes the hypervisor's RAM first (layout.carve_hyperv), calls ``write_processor_state`` for each
CPU while building NT's processors, and ``build`` once NT is complete; nothing here runs for non-Hyper-V specs.
"""

from __future__ import annotations

import random
import struct

from wincrash.formats.context import CONTEXT_AMD64_STRUCT, FPU_CONTROL_DEFAULT, GPR_NAMES, MXCSR_DEFAULT
from wincrash_testkit.synth import pe
from wincrash_testkit.synth.builds import KUSER_SHARED_DATA_VA, WindowsBuild
from wincrash_testkit.synth.cpu import (
    GPRS,
    KERNEL_CS_FLAGS,
    KERNEL_SS_FLAGS,
    TSS_BUSY_FLAGS,
    CpuState,
    Segment,
    gdt_bytes,
    idt_entry,
)
from wincrash_testkit.synth.paging import KERNEL_CODE, KERNEL_DATA, AddressSpace, VaAllocator, canonical
from wincrash_testkit.synth.physmem import LARGE, PAGE, PhysAllocator
from wincrash_testkit.synth.state import Builder

CONTEXT_FRAME_FLAGS = 0x10000F  # CONTROL | INTEGER | SEGMENTS | FLOATING_POINT, as KiSaveProcessorState stores
HV_CR0 = 0x80010031  # PG WP NE ET PE
HV_CR4 = 0x000426E0  # OSXSAVE VMXE OSXMMEXCPT OSFXSR PGE MCE PAE: VMX on, as in a hypervisor
HV_STACK_PAGES = 4
PERCPU_PAGES = 2
# Layout of the (synthetic) hypervisor per-CPU block that GS points at: its own address first, like KPCR.Self.
PERCPU_SELF, PERCPU_INDEX, PERCPU_IDT, PERCPU_GDT, PERCPU_TSS, PERCPU_STACK = 0x0, 0x8, 0x10, 0x18, 0x20, 0x28


def context_frame(state: CpuState) -> bytes:
    """The CONTEXT Windows saves in KPRCB.ProcessorState.ContextFrame for a CPU in NT kernel code."""
    ctx = CONTEXT_AMD64_STRUCT.parse(bytes(CONTEXT_AMD64_STRUCT.sizeof()))
    r, seg = state.regs, state.segments
    ctx.ContextFlags = CONTEXT_FRAME_FLAGS
    ctx.MxCsr = MXCSR_DEFAULT
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        ctx[f"Seg{name.capitalize()}"] = seg[name].selector
    ctx.EFlags = r["rflags"]
    for name in GPR_NAMES:
        ctx[name] = r[name.lower()]
    ctx.Rip = r["rip"]
    ctx.FltSave.ControlWord = FPU_CONTROL_DEFAULT
    ctx.FltSave.MxCsr = MXCSR_DEFAULT
    ctx.FltSave.MxCsr_Mask = 0xFFFF
    return CONTEXT_AMD64_STRUCT.build(ctx)


def write_processor_state(s: AddressSpace, wb: WindowsBuild, index: int, prcb: int, state: CpuState) -> dict:
    """Fill KPRCB.ProcessorState.ContextFrame (and SpecialRegisters.MxCsr) of one CPU; returns its truth."""
    o = wb.offsets
    ps = prcb + o["_KPRCB.ProcessorState"]
    frame_va = ps + o["_KPROCESSOR_STATE.ContextFrame"]
    s.write_u32(ps + o["_KPROCESSOR_STATE.SpecialRegisters"] + o["_KSPECIAL_REGISTERS.MxCsr"], MXCSR_DEFAULT)
    s.write(frame_va, context_frame(state))
    return {"index": index, "va": frame_va, "pa": s.pa(frame_va),
            "special_registers_va": ps + o["_KPROCESSOR_STATE.SpecialRegisters"],
            "registers": {k: state.regs[k] for k in (*GPRS, "rip", "rflags")},
            "segments": {k: state.segments[k].selector for k in ("cs", "ds", "es", "fs", "gs", "ss")},
            "context_flags": CONTEXT_FRAME_FLAGS, "mxcsr": MXCSR_DEFAULT, "flt_save_mxcsr": MXCSR_DEFAULT}


def _hv_segments(percpu: int, gdt: int, idt: int, tss: int) -> dict[str, Segment]:
    """Segment registers of a vCPU in the hypervisor: 64-bit ring 0, null data selectors, GS = per-CPU block."""
    null = Segment(0, 0, 0, 0)
    return {"cs": Segment(0x10, 0, KERNEL_CS_FLAGS, 0), "ds": null, "es": null, "fs": null,
            "gs": Segment(0, 0, 0, percpu), "ss": Segment(0x18, 0, KERNEL_SS_FLAGS, 0),
            "ldt": Segment(0, 0, 0, 0), "tr": Segment(0x40, 0x67, TSS_BUSY_FLAGS, tss),
            "gdt": Segment(0, 0x7F, 0, gdt), "idt": Segment(0, 0xFFF, 0, idt)}


def _image(space: AddressSpace, rng: random.Random, base: int, name: str, pdb: str, size: int) -> dict:
    """Map a PE32+ image with 4 KiB pages: headers, CodeView record, .text filled with code-like bytes."""
    text_end = ((size * 3 // 5) & ~0xFFF)
    rdata_end = text_end + ((size - text_end) // 2 & ~0xFFF)
    sections = [pe.Section(".text", 0x1000, text_end - 0x1000, pe.TEXT),
                pe.Section(".rdata", text_end, rdata_end - text_end, pe.RDATA),
                pe.Section(".data", rdata_end, size - rdata_end - PAGE, pe.DATA),
                pe.Section(".reloc", size - PAGE, PAGE, pe.RELOC)]
    pas = []
    for rva in range(0, size, PAGE):
        pa = space.alloc.page()
        space.map_4k(base + rva, pa, KERNEL_CODE if 0x1000 <= rva < text_end else KERNEL_DATA)
        pas.append(pa)
    guid = rng.randbytes(16).hex().upper()
    timestamp = rng.randrange(0x50000000, 0x60000000)
    rsds = pe.codeview_record(pdb, guid, 1)
    debug = pe.debug_directory(text_end + 0x40, len(rsds), timestamp)
    space.write(base, pe.pe_headers(image_base=base, size_of_image=size, sections=sections, entry_rva=0x1000,
                                    timestamp=timestamp, os_version=(10, 0), debug_dir=(text_end, len(debug))))
    space.write(base + text_end, debug)
    space.write(base + text_end + 0x40, rsds)
    for rva in range(0x1000, text_end, PAGE):
        space.write(base + rva, b"\xcc\xcc" + rng.randbytes(PAGE - 2))
    return {"name": name, "base": base, "size_of_image": size, "pdb": pdb, "pdb_guid": guid, "pdb_age": 1,
            "timestamp": timestamp, "text": [base + 0x1000, base + text_end], "page_pas": pas}


def _range_bytes(pfn_range: tuple[int, int]) -> list[int]:
    return [pfn_range[0] * PAGE, pfn_range[1] * PAGE]


def build(b: Builder) -> None:
    """Add hvix64's and securekernel's address spaces and put the vCPUs in ``hv_cpus`` into the hypervisor."""
    rng, mem, spec = b.rng, b.mem, b.spec
    hv_cpus = sorted(spec.hv_cpus) if spec.hv_cpus is not None else list(range(spec.cpus))
    nt_states = list(b.cpu_states)

    # --- hypervisor: its own PML4 (no self-reference, no KUSER_SHARED_DATA, no ntoskrnl) -------------------
    hv_alloc = PhysAllocator([b.hv_range], rng)
    hv_space = AddressSpace(mem, hv_alloc, None, self_ref_nx=True)
    # Below 0xFFFFF80002000000, where ntoskrnl never starts: the same VA must not hold ntoskrnl in any space.
    hv_base = 0xFFFFF80000000000 + rng.randrange(0x1, 0x8) * LARGE
    hv_image = _image(hv_space, rng, hv_base, "hvix64.exe", "hvix64.pdb", rng.randrange(0x140, 0x1A0) * PAGE)
    text_lo, text_hi = hv_image["text"]
    handlers = [rng.randrange(text_lo, text_hi) & ~0xF for _ in range(256)]
    heap = VaAllocator(hv_space, canonical(rng.randrange(0x100, 0x1EE) << 39) + rng.randrange(0x10, 0x10000) * PAGE)
    note_states, percpu_truth = [], []
    for state in nt_states:
        i = state.index
        percpu = heap.alloc_pages(PERCPU_PAGES)
        gdt = heap.alloc(0x80, 0x1000)
        tss = heap.alloc(0x68, 0x10)
        idt = heap.alloc(0x1000, 0x1000)
        stack_top = heap.alloc_pages(HV_STACK_PAGES) + HV_STACK_PAGES * PAGE
        heap.skip(PAGE)
        hv_space.write(gdt, gdt_bytes(tss))
        hv_space.write(idt, b"".join(idt_entry(h, ist=(1 if v in (2, 8, 18) else 0)) for v, h in enumerate(handlers)))
        hv_space.write(tss + 4, struct.pack("<Q", stack_top))
        hv_space.write(tss + 0x66, struct.pack("<H", 0x68))
        hv_space.write(percpu, struct.pack("<6Q", percpu, i, idt, gdt, tss, stack_top))
        hv_space.write(stack_top - PAGE, rng.randbytes(PAGE))
        percpu_truth.append({"index": i, "percpu": percpu, "percpu_pa": hv_space.pa(percpu), "gdt": gdt,
                             "idt": idt, "tss": tss, "stack_top": stack_top})
        if i not in hv_cpus:
            note_states.append(state)
            continue
        regs = {name: rng.getrandbits(64) for name in GPRS}
        regs["rsp"] = stack_top - (rng.randrange(0x40, 0x600) & ~0xF) - 8
        regs["rbp"] = stack_top - rng.randrange(0x2, 0x40) * 8
        regs["rip"] = rng.randrange(text_lo, text_hi)
        regs["rflags"] = rng.choice((0x2, 0x46, 0x86))
        cr2 = canonical(rng.getrandbits(48)) & ~0x7
        note_states.append(CpuState(index=i, regs=regs, segments=_hv_segments(percpu, gdt, idt, tss),
                                    cr=[HV_CR0, 0, cr2, hv_space.dtb, HV_CR4],
                                    kernel_gs_base=state.kernel_gs_base))  # MSR left as NT had it (lazy switch)
    b.cpu_states = note_states

    # --- secure kernel: a VTL1 space that looks like Windows (self-reference, KUSER-like page), no ntoskrnl ----
    sk_alloc = PhysAllocator([b.sk_range], rng)
    sk_slot = rng.randrange(0x100, 0x1EF)
    sk_space = AddressSpace(mem, sk_alloc, sk_slot, self_ref_nx=True)
    sk_base = 0xFFFFF80000000000 + rng.randrange(0x8, 0x10) * LARGE
    sk_image = _image(sk_space, rng, sk_base, "securekernel.exe", "securekernel.pdb", rng.randrange(0xB0, 0x110) * PAGE)
    sk_kuser = sk_alloc.page()
    sk_space.map_4k(KUSER_SHARED_DATA_VA, sk_kuser, KERNEL_DATA)
    for name, value in (("NtMajorVersion", b.wb.nt_major), ("NtMinorVersion", b.wb.nt_minor)):
        sk_space.write_u32(KUSER_SHARED_DATA_VA + b.wb.offsets[f"_KUSER_SHARED_DATA.{name}"], value)

    b.truth["hyperv"] = {
        "hypervisor": {**{k: v for k, v in hv_image.items() if k != "page_pas"}, "cr3": hv_space.dtb,
                       "pa_ranges": [_range_bytes(b.hv_range)], "idt_handlers": handlers, "percpu": percpu_truth},
        "securekernel": {**{k: v for k, v in sk_image.items() if k != "page_pas"}, "cr3": sk_space.dtb,
                         "self_ref_slot": sk_slot, "kuser_like_pa": sk_kuser,
                         "pa_ranges": [_range_bytes(b.sk_range)]},
        "hv_cpus": hv_cpus,
        "nt_dtb": b.space.dtb,
        "nt_contexts": b.nt_contexts,
        "note_registers": [dict(st.to_dict(), context="hypervisor" if st.index in hv_cpus else "nt")
                           for st in note_states],
    }
