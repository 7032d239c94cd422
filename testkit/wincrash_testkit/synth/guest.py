"""Build a synthetic Windows x64 guest: physical memory, vCPU states and the ground truth tests check.

Everything a converter must find is placed as real Windows places it (structure offsets and symbol RVAs of
the real kernels, encoded KDBG, self-referencing page tables, Windows' own RAM runs); most of RAM stays
zero, so any size from 256 MiB to 64 GiB costs a few MiB and seconds. Seeded and deterministic: the stages
below share one RNG, so their order is part of the output (tests/unit/testkit/test_synth_hyperv.py pins it).

Stages, one module each: kernel (ntoskrnl image), objects (drivers, modules, threads), processes, system
(RAM runs, bugcheck, KUSER_SHARED_DATA), processors, debugger (KDBG), hyperv (root partition), noise.
"""

from __future__ import annotations

from wincrash_testkit.synth import debugger, hyperv, kernel, noise, objects, processes, processors, system
from wincrash_testkit.synth.kernel import DATA_SYMBOLS
from wincrash_testkit.synth.paging import pte_base
from wincrash_testkit.synth.spec import NMI_HARDWARE_FAILURE, SUPPORTED_BUILDS, Guest, GuestSpec
from wincrash_testkit.synth.state import Builder

__all__ = ["NMI_HARDWARE_FAILURE", "SUPPORTED_BUILDS", "Guest", "GuestSpec", "generate"]


def generate(spec: GuestSpec) -> Guest:
    """Build the whole guest in memory (a few MiB whatever its RAM size); ValueError for an invalid spec."""
    b = Builder(spec)
    b.build_space()
    kernel.plan_kernel(b)
    kernel.map_kernel(b)
    objects.load_drivers(b)
    objects.module_list(b)
    processes.processes(b)
    system.memory_block(b)
    system.bugcheck(b)
    system.kuser(b)
    processors.processors(b)
    debugger.debugger_data(b)
    if spec.hyperv:
        hyperv.build(b)
    processes.share_kernel_half(b)
    noise.noise(b)
    layout = b.layout
    symbols = {name: b.sym(name) for name in DATA_SYMBOLS + ("NtBuildNumber", "NtBuildLab")}
    truth = {
        "generator": "wincrash_testkit.synth", "spec": {"build": spec.build, "cpus": spec.cpus,
                                                        "ram_mib": spec.ram_mib, "seed": spec.seed,
                                                        "crashed": spec.crashed},
        "build": spec.build, "cpus": spec.cpus, "ram_bytes": layout.ram_bytes,
        "elf_blocks": [list(x) for x in layout.elf_blocks], "windows_runs": [list(x) for x in layout.windows_runs],
        "reserved_ranges": [list(x) for x in layout.reserved],
        "dtb": b.space.dtb, "self_ref_slot": b.self_ref, "pte_base": pte_base(b.self_ref),
        "mm_pfn_database": {"va": b.sym("MmPfnDatabase"), "value": b.pfn_database},
        "kernel_regions": dict(b.regions),
        "symbols": symbols, "ki_processor_block": b.sym("KiProcessorBlock"),
        "ps_loaded_module_list": b.sym("PsLoadedModuleList"), "ps_active_process_head": b.sym("PsActiveProcessHead"),
        **b.truth,
    }
    if spec.save_contexts:
        truth["saved_contexts"] = b.nt_contexts  # the KPRCB.ProcessorState.ContextFrame written
    if spec.hyperv:
        truth["spec"].update(hyperv=True, hv_cpus=truth["hyperv"]["hv_cpus"])
    return Guest(spec=spec, layout=layout, mem=b.mem, cpus=b.cpu_states, truth=truth)
