"""Print a ConversionResult: what was found, where, how (its warnings go to stderr: wincrash.render)."""

from __future__ import annotations

import json

from rich.console import Console

from wincrash.convert.pipeline import ConversionResult


def print_conversion(result: ConversionResult, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    console = Console(highlight=False, soft_wrap=True)
    f = result.facts
    k = f.kernel
    console.print(f"[bold]{result.output}[/bold]: {result.format} dump, {result.file_size:,} bytes")
    if k is not None:
        console.print(f"  kernel      ntoskrnl at 0x{k.base:x} ({k.pdb_name} {k.pdb_guid}/{k.pdb_age}) "
                      f"— {f.methods.get('kernel')}")
    console.print(f"  build       {f.build} ({f.nt_build_lab or 'build lab unknown'}) — {f.methods.get('build')}")
    console.print(f"  DTB         0x{f.dtb:x} — {f.methods.get('directory_table_base')}"
                  + (f"; header uses System's 0x{f.system_dtb:x}" if f.system_dtb and f.system_dtb != f.dtb else ""))
    if f.kdbg is not None:
        console.print(f"  KDBG        0x{f.kdbg.va:x} (physical 0x{f.kdbg_pa or 0:x}) — {f.methods.get('kdbg')}")
    console.print(f"  processors  {len(f.cpus)} — {f.methods.get('cpus', 'none found')}")
    if f.hyperv:
        hv = f.hyperv
        console.print(f"  [bold]Hyper-V detected[/bold]: {hv['hypervisor']['pdb']} at {hv['hypervisor']['base']}; "
                      f"vCPU(s) {', '.join(map(str, hv['cpus_in_hypervisor_context']))} were in hypervisor context "
                      "(their NT registers come from KPRCB.ProcessorState)"
                      + (f"; secure kernel (VBS) at {hv['secure_kernel']['base']}" if hv.get("secure_kernel") else ""))
    console.print(f"  bugcheck    {result.bugcheck}" + ("" if f.crashed else " (the guest had not crashed: live dump)"))
    console.print(f"  memory      {len(f.runs)} run(s), {result.pages_in_runs:,} pages — {f.methods.get('runs')}")
    if result.format == "bitmap":
        console.print(f"  bitmap      {result.pages_written:,} pages written, {result.pages_left_out:,} zero pages "
                      "left out")
    console.print(f"  time        {result.seconds_finding_windows:.2f} s finding Windows, "
                  f"{result.seconds_writing:.2f} s writing")
