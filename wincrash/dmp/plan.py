"""Plan a DMP from what was found in memory: header values, memory patches, and where registers come from.

plan_dump() decides and writes nothing: it returns a frozen DumpPlan that dmp/writer.py carries out.
Patches are (guest-physical address, bytes) pairs written over the copied pages: the decoded KDBG
(Windows 8+ keep it encoded; WinDbg needs it plain) and each processor's CONTEXT, written into the
buffer KPRCB.Context points at, where WinDbg reads a processor's registers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from wincrash import __version__
from wincrash.dmp.context import context_from_note, context_problem
from wincrash.dmp.header import HeaderFields
from wincrash.errors import WincrashError
from wincrash.formats.context import CONTEXT_AMD64, CONTEXT_AMD64_SIZE, CONTEXT_AMD64_STRUCT, MXCSR_DEFAULT
from wincrash.formats.dump import MAX_RUNS64, PAGE_SIZE
from wincrash.memory.qemu_elf import cpu_mode
from wincrash.memory.source import PhysicalSource
from wincrash.windows.bugcheck import LIVE_SYSTEM_DUMP, describe_bugcheck
from wincrash.windows.facts import WindowsFacts
from wincrash.windows.kernel_memory import KernelPages, select_kernel_pages
from wincrash.windows.paging import AddressSpace

KERNEL_SPACE = 0xFFFF800000000000  # lowest canonical kernel-half virtual address
KERNEL_CODE_SELECTOR = 0x10  # KGDT64_R0_CODE: CS of a kernel-mode x64 context
WINDOWS_CODE_SELECTORS = (0x10, 0x33)  # KGDT64_R0_CODE, KGDT64_R3_CODE | 3
REGISTERS_FROM_SAVED = "KPRCB.ProcessorState.ContextFrame (Windows' saved context)"

Patch = tuple[int, bytes]  # (guest-physical address, bytes to write there)


@dataclass(frozen=True)
class DumpPlan:
    """Everything a writer needs besides the memory itself.

    ``patches`` never cross a page; ``register_sources`` maps processor number -> where the dump's
    registers for it come from (only processors that have registers); ``bugcheck`` describes the
    header's stop code ("0x00000161 LIVE_SYSTEM_DUMP" for a guest that had not crashed);
    ``warnings`` are what planning could not do, for the user; ``kernel_pages`` the pages a kernel
    dump keeps (None for full and bitmap dumps, which hold every page of the runs).
    """

    header: HeaderFields
    patches: tuple[Patch, ...]
    register_sources: Mapping[int, str]
    bugcheck: str
    warnings: tuple[str, ...]
    kernel_pages: KernelPages | None = None


def merge_runs(runs: Sequence[tuple[int, int]], limit: int = MAX_RUNS64) -> list[tuple[int, int]]:
    """At most ``limit`` (first page, page count) runs, by closing the smallest gaps (written as zero pages).

    Closing one gap changes no other gap, so the gaps kept are the ``limit - 1`` largest (ties: the
    later one kept): O(n log n), whatever the number of runs (a savevm stream's page map has millions).
    """
    merged = sorted(runs)
    if len(merged) <= limit:
        return merged
    gaps = sorted((merged[i + 1][0] - (merged[i][0] + merged[i][1]), i) for i in range(len(merged) - 1))
    close = {i for _, i in gaps[:len(merged) - limit]}
    out: list[tuple[int, int]] = []
    for i, (base, count) in enumerate(merged):
        if i - 1 in close:
            first = out[-1][0]
            out[-1] = (first, base + count - first)
        else:
            out.append((base, count))
    return out


def va_patch(space: AddressSpace, va: int, data: bytes) -> list[Patch] | None:
    """Physical patches that write ``data`` at virtual ``va`` (one per page touched); None if a page is unmapped."""
    patches = []
    pos = 0
    while pos < len(data):
        pa = space.translate(va + pos)
        if pa is None:
            return None
        n = min(len(data) - pos, PAGE_SIZE - ((va + pos) % PAGE_SIZE))
        patches.append((pa, data[pos:pos + n]))
        pos += n
    return patches


def saved_context(space: AddressSpace, va: int | None) -> bytes | None:
    """The 0x4D0-byte CONTEXT Windows saved at ``va`` (KPRCB.ProcessorState.ContextFrame), when it looks
    like a kernel context (CONTEXT_AMD64 flag, CS 0x10, RIP in the kernel half, MxCsr mirrored: context_problem);
    None otherwise."""
    if not va:
        return None
    raw = space.read(va, CONTEXT_AMD64_SIZE)
    if raw is None:
        return None
    ctx = CONTEXT_AMD64_STRUCT.parse(raw)
    if not ctx.ContextFlags & CONTEXT_AMD64 or ctx.SegCs != KERNEL_CODE_SELECTOR or ctx.Rip < KERNEL_SPACE:
        return None
    return None if context_problem(raw) else raw


def processor_contexts(facts: WindowsFacts, source: PhysicalSource
                       ) -> tuple[dict[int, bytes], dict[int, str], list[Patch], list[str]]:
    """(CONTEXT per processor number, where each came from, patches writing them into KPRCB.Context's
    buffer, warnings).

    A processor's registers come from its vCPU note when that note is in long mode (vcpus.py never
    matches another), else from Windows' saved KPRCB.ProcessorState.ContextFrame when it holds a
    kernel context; a processor with neither gets no CONTEXT.
    """
    space = facts.kernel.space
    contexts: dict[int, bytes] = {}
    sources: dict[int, str] = {}
    patches: list[Patch] = []
    warnings: list[str] = []
    for cpu in facts.cpus:
        note = source.cpus[cpu.note_index] if cpu.note_index is not None else None
        if note is not None and cpu_mode(note) == "long":
            ctx = context_from_note(note)
            sources[cpu.number] = cpu.register_source
        else:
            saved = saved_context(space, cpu.proc_state_context_va)
            if saved is None:
                continue
            ctx = saved
            sources[cpu.number] = REGISTERS_FROM_SAVED
        contexts[cpu.number] = ctx
        if cpu.context_va:
            p = va_patch(space, cpu.context_va, ctx)
            if p is None:
                warnings.append(f"processor {cpu.number}: its CONTEXT buffer 0x{cpu.context_va:x} is not "
                                "mapped; its registers are not written")
            else:
                patches += p
    return contexts, sources, patches, warnings


def selector_only_context() -> bytes:
    """A kernel-mode CONTEXT holding only Windows x64's kernel selectors (CS 0x10, SS 0x18, DS/ES/GS 0x2B,
    FS 0x53), EFlags 0x202 and the default MXCSR: what the header carries when no processor's
    registers are known, so that readers still see a Windows context and not zeros."""
    ctx = CONTEXT_AMD64_STRUCT.parse(bytes(CONTEXT_AMD64_SIZE))
    ctx.ContextFlags = CONTEXT_AMD64 | 0x5  # CONTROL | SEGMENTS
    ctx.SegCs, ctx.SegSs = KERNEL_CODE_SELECTOR, KERNEL_CODE_SELECTOR + 8
    ctx.SegDs = ctx.SegEs = ctx.SegGs = 0x2B
    ctx.SegFs = 0x53
    ctx.EFlags = 0x202
    ctx.MxCsr = ctx.FltSave.MxCsr = MXCSR_DEFAULT
    return CONTEXT_AMD64_STRUCT.build(ctx)


def choose_header_context(contexts: Mapping[int, bytes], source: PhysicalSource) -> tuple[bytes, str | None]:
    """(the header's ContextRecord, a warning or None): always a Windows x64 context (CS 0x10 or 0x33).

    A DMP input's own ContextRecord when it holds one with a RIP (the crash context it recorded), else
    processor 0's context, else the lowest-numbered processor that has one, else the first vCPU
    note in long mode with a Windows code selector, else selector_only_context() with a warning.
    """
    header = source.dump_header
    kept_warning = None
    if header is not None and header.context is not None and header.context_rip:
        problem = context_problem(header.context)
        if problem is None:
            return header.context, None
        kept_warning = f"the input dump's header context is not a Windows context ({problem}): not kept"
    if contexts:
        return contexts.get(0) or contexts[min(contexts)], kept_warning
    for note in source.cpus:
        if cpu_mode(note) == "long" and note.cs.selector & 0xFFFF in WINDOWS_CODE_SELECTORS:
            return context_from_note(note), kept_warning
    return selector_only_context(), "; ".join(filter(None, (
        kept_warning, "no processor's registers are known (no vCPU note in long mode, no saved KPRCB context): the "
                      "header context holds only kernel selectors")))


def plan_dump(facts: WindowsFacts, source: PhysicalSource, fmt: str = "full") -> DumpPlan:
    """The header, patches and register sources of a DMP of ``source`` as ``facts`` describe it.

    Each processor's registers come from its vCPU note in long mode, else from Windows' saved context
    (processor_contexts); the header context is always a Windows one (choose_header_context);
    PfnDataBase is MmPfnDatabase's value (the PFN array), as in Windows' own full, bitmap and kernel
    dumps. A DMP input (source.dump_header) keeps its header's bugcheck, NumberProcessors and context.
    ``fmt`` "kernel" also selects the kernel's pages (windows/kernel_memory.py). A guest that had not
    crashed gets LIVE_SYSTEM_DUMP (0x161). More than MAX_RUNS64 runs are merged. Reads memory
    through facts.kernel.space; changes neither argument. Raises WincrashError when the decoded
    KDBG cannot be written back (its page is not mapped).
    """
    space = facts.kernel.space
    kdbg = facts.kdbg
    warnings: list[str] = []
    patches: list[Patch] = []
    if kdbg.encoded:
        kdbg_patch = va_patch(space, kdbg.va, kdbg.plain)
        if kdbg_patch is None:
            raise WincrashError("the KDBG was decoded but its page is not mapped: cannot write it back")
        patches += kdbg_patch
    contexts, sources, context_patches, context_warnings = processor_contexts(facts, source)
    patches += context_patches
    warnings += context_warnings
    header_context, header_warning = choose_header_context(contexts, source)
    if header_warning:
        warnings.append(header_warning)
    pfn_database = space.read_u64(kdbg.mm_pfn_database)
    if pfn_database is None:
        warnings.append(f"MmPfnDatabase (0x{kdbg.mm_pfn_database:x}) is not readable: the header's PfnDataBase is 0")
    runs: Sequence[tuple[int, int]] = facts.runs
    if len(runs) > MAX_RUNS64:
        warnings.append(f"Windows describes {len(runs)} memory runs; merged into {MAX_RUNS64} (the gaps "
                        "are written as zero pages)")
        runs = merge_runs(runs)
    code, params = (facts.bugcheck_code, facts.bugcheck_parameters) if facts.crashed else (LIVE_SYSTEM_DUMP,
                                                                                          (0, 0, 0, 0))
    processors = len(facts.cpus) or max(len(source.cpus), 1)
    input_header = source.dump_header
    if input_header is not None:  # a DMP input keeps the crash its header records
        if input_header.bugcheck_code:
            code, params = input_header.bugcheck_code, input_header.bugcheck_parameters
        processors = input_header.number_processors or processors
    header = HeaderFields(
        build=facts.build, directory_table_base=facts.system_dtb or facts.dtb,
        pfn_database=pfn_database or 0, ps_loaded_module_list=kdbg.ps_loaded_module_list,
        ps_active_process_head=kdbg.ps_active_process_head, kd_debugger_data_block=kdbg.va,
        number_processors=processors, bugcheck_code=code,
        bugcheck_parameters=params, runs=runs, context=header_context, system_time=facts.system_time,
        system_uptime=facts.interrupt_time, product_type=facts.product_type, suite_mask=facts.suite_mask,
        kd_secondary_version=facts.kd_secondary_version, major_version=facts.major_version,
        comment=f"wincrash {__version__}: {'live' if code == LIVE_SYSTEM_DUMP else 'crash'} dump converted from "
                f"{source.kind} without symbols",
    )
    kernel_pages = None
    if fmt == "kernel":
        kernel_pages = select_kernel_pages(facts, source, runs, {pa // PAGE_SIZE for pa, _ in patches})
    return DumpPlan(header, tuple(patches), MappingProxyType(sources), describe_bugcheck(code), tuple(warnings),
                    kernel_pages)
