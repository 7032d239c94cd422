"""Print a ConversionResult: what was found, where, how (its warnings go to stderr: wincrash.render)."""

from __future__ import annotations

import json

from rich.console import Console

from wincrash.convert.pipeline import ConversionResult


def print_conversion(result: ConversionResult, as_json: bool = False) -> None:
    """Print ``result`` to stdout: a short text summary and warnings, or its to_dict() as JSON."""
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    console = Console(highlight=False, soft_wrap=True)
    f = result.facts
    k = f.kernel.image
    console.print(f"[bold]{result.output}[/bold]: {result.format} dump, {result.file_size:,} bytes")
    console.print(f"  kernel      ntoskrnl at 0x{k.base:x} ({k.pdb_name} {k.pdb_guid}/{k.pdb_age}) "
                  f"— {f.methods.get('kernel')}")
    console.print(f"  build       {f.build} ({f.nt_build_lab or 'build lab unknown'}) — {f.methods.get('build')}")
    console.print(f"  DTB         0x{f.dtb:x} — {f.methods.get('directory_table_base')}"
                  + (f"; header uses System's 0x{f.system_dtb:x}" if f.system_dtb and f.system_dtb != f.dtb else ""))
    console.print(f"  KDBG        0x{f.kdbg.va:x} (physical 0x{f.kdbg.pa or 0:x}) — {f.methods.get('kdbg')}")
    console.print(f"  processors  {len(f.cpus)} — {f.methods.get('cpus', 'none found')}")
    if f.hyperv is not None:
        hv = f.hyperv
        console.print(f"  [bold]Hyper-V detected[/bold]: {hv.hypervisor.pdb_name} at {hex(hv.hypervisor.base)}; "
                      f"vCPU(s) {', '.join(map(str, hv.cpus_in_hypervisor_context))} were in hypervisor context "
                      "(their NT registers come from KPRCB.ProcessorState)"
                      + (f"; secure kernel (VBS) at {hex(hv.secure_kernel.base)}" if hv.secure_kernel else ""))
    console.print(f"  bugcheck    {result.bugcheck}" + ("" if f.crashed else " (the guest had not crashed: live dump)"))
    console.print(f"  memory      {len(f.runs)} run(s), {result.pages_in_runs:,} pages — {f.methods.get('runs')}")
    if result.format == "kernel" and result.plan.kernel_pages is not None:
        kp = result.plan.kernel_pages
        share = result.pages_written / max(result.pages_in_runs, 1)
        console.print(f"  kernel      {result.pages_written:,} of {result.pages_in_runs:,} pages kept ({share:.1%}): "
                      f"{kp.tables:,} page-table pages, {kp.process_tables} of {kp.processes} processes' "
                      f"top-level tables; {result.file_size:,} bytes against {result.full_size:,} for a full dump")
    console.print(f"  time        {result.seconds_finding_windows:.2f} s finding Windows, "
                  f"{result.seconds_writing:.2f} s writing")
