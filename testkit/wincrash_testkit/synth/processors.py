"""Each processor: KPCR/KPRCB (CPU 0's in .data like KiInitialPcr), GDT, TSS, IDT, stack, and its vCPU state."""

from __future__ import annotations

import struct

from wincrash_testkit.synth import hyperv, objects
from wincrash_testkit.synth.cpu import GPRS, CpuState, gdt_bytes, idt_entry, kernel_segments
from wincrash_testkit.synth.objects import STACK_PAGES
from wincrash_testkit.synth.paging import canonical
from wincrash_testkit.synth.physmem import PAGE
from wincrash_testkit.synth.state import Builder

CONTEXT_ALL = 0x10001F
CONTEXT_SIZE = 0x4D0


def processors(b: Builder) -> None:
    """KPCR, KPRCB and per-CPU tables of every CPU, the registers QEMU's notes will hold, KiProcessorBlock."""
    wb, o, rng, s = b.wb, b.wb.offsets, b.rng, b.space
    kpcr_size = wb.sizes["_KPCR"]
    text_lo, text_hi = b.text
    handlers = [b.kern_base + (rng.randrange(text_lo, text_hi) & ~0xF) for _ in range(256)]
    handlers[0] = b.sym("KiDivideErrorFault")
    handlers[14] = b.sym("KiPageFault")
    build = b.spec.build
    cr4 = 0x1506F8 if build >= 14393 else 0x406F8
    b.cpu_states: list[CpuState] = []
    cpu_truth = []
    kprcbs = []
    for i in range(b.spec.cpus):
        kpcr = b.kern_base + b.pcr0_rva if i == 0 else b.pool.alloc_pages(-(-kpcr_size // PAGE))
        prcb = kpcr + o["_KPCR.Prcb"]
        gdt = b.pool.alloc(0x80, 0x1000)
        tss = b.pool.alloc(0x68, 0x10)
        idt = b.pool.alloc(0x1000, 0x1000)
        context = b.pool.alloc(CONTEXT_SIZE, 0x40)
        stack_top = b.pool.alloc_pages(STACK_PAGES) + STACK_PAGES * PAGE
        b.pool.skip(PAGE)  # guard page
        rsp = stack_top - (rng.randrange(0x100, 0x1800) & ~0xF) - 8
        s.write(stack_top - PAGE, rng.randbytes(PAGE))  # some stack contents
        s.write(gdt, gdt_bytes(tss))
        s.write(idt, b"".join(idt_entry(h, ist=(3 if v == 2 else 0)) for v, h in enumerate(handlers)))
        s.write(tss + 4, struct.pack("<Q", stack_top))
        s.write(tss + 0x66, struct.pack("<H", 0x68))
        crashed_here = b.spec.crashed and i == 0
        if crashed_here:
            thread = objects.thread(b, b.system_process, stack_top, rsp, i)
            rip = b.sym("KeBugCheckEx") + rng.randrange(0x10, 0x80)
        else:
            thread = objects.thread(b, b.idle_process, stack_top, rsp, i)
            rip = b.sym("KiIdleLoop") + rng.randrange(0x10, 0x100)
        kgs = rng.randrange(0x10000, 0x7FF000) * PAGE  # a user TEB
        # KPCR
        s.write_u64(kpcr + o["_KPCR.GdtBase"], gdt)
        s.write_u64(kpcr + o["_KPCR.TssBase"], tss)
        s.write_u64(kpcr + o["_KPCR.Self"], kpcr)
        s.write_u64(kpcr + o["_KPCR.CurrentPrcb"], prcb)
        s.write_u64(kpcr + o["_KPCR.IdtBase"], idt)
        s.write(kpcr + o["_KPCR.Irql"], b"\x0f" if crashed_here else b"\x00")
        # KPRCB
        s.write_u64(prcb + o["_KPRCB.CurrentThread"], thread)
        s.write_u64(prcb + o["_KPRCB.IdleThread"], thread if not crashed_here else
                    objects.thread(b, b.idle_process, stack_top, rsp, i))
        s.write_u32(prcb + o["_KPRCB.Number"], i)
        s.write_u64(prcb + o["_KPRCB.Context"], context)
        s.write_u32(prcb + o[wb.prcb_context_flags_key], CONTEXT_ALL)
        s.write(prcb + o["_KPRCB.CpuType"], b"\x06")
        s.write_u32(prcb + o["_KPRCB.MHz"], 2400)
        s.write(prcb + o["_KPRCB.VendorString"], b"AuthenticAMD\x00")
        sr = prcb + o["_KPRCB.ProcessorState"] + o["_KPROCESSOR_STATE.SpecialRegisters"]
        cr2 = canonical(rng.getrandbits(48)) & ~0x7
        for name, value in (("Cr0", 0x80050033), ("Cr2", cr2), ("Cr3", s.dtb), ("Cr4", cr4),
                            ("MsrGsBase", kpcr), ("MsrGsSwap", kgs)):
            s.write_u64(sr + o[f"_KSPECIAL_REGISTERS.{name}"], value)
        s.write(sr + o["_KSPECIAL_REGISTERS.Gdtr"] + 6, struct.pack("<HQ", 0x7F, gdt))
        s.write(sr + o["_KSPECIAL_REGISTERS.Idtr"] + 6, struct.pack("<HQ", 0xFFF, idt))
        s.write(sr + o["_KSPECIAL_REGISTERS.Tr"], struct.pack("<HHI", 0x40, 0, 0x1F80))
        regs = {name: rng.getrandbits(64) for name in GPRS}
        regs["rsp"] = rsp
        regs["rbp"] = stack_top - rng.randrange(0x10, 0x80) * 8
        regs["rip"] = rip
        regs["rflags"] = 0x46 if crashed_here else rng.choice((0x246, 0x202, 0x286))
        state = CpuState(index=i, regs=regs, segments=kernel_segments(kpcr, gdt, idt, tss),
                         cr=[0x80050033, 0, cr2, s.dtb, cr4], kernel_gs_base=kgs)
        b.cpu_states.append(state)
        if b.spec.hyperv or b.spec.save_contexts:  # KeBugCheckEx and the frozen CPUs save their state there
            b.nt_contexts.append(hyperv.write_processor_state(s, wb, i, prcb, state))
        kprcbs.append(prcb)
        cpu_truth.append({"index": i, "kpcr": kpcr, "kpcr_pa": s.pa(kpcr), "kprcb": prcb, "kprcb_pa": s.pa(prcb),
                          "context_va": context, "context_pa": s.pa(context), "current_thread": thread,
                          "gdt": gdt, "idt": idt, "tss": tss, "stack_top": stack_top, **state.to_dict()})
    s.write(b.sym("KiProcessorBlock"), struct.pack(f"<{len(kprcbs)}Q", *kprcbs))
    b.truth["processors"] = cpu_truth
