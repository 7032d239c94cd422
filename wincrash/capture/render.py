"""Printing capture results: one readable summary, or JSON on stdout with --json."""

from __future__ import annotations

import json

import typer

from wincrash.capture.crash_capture import CaptureResult
from wincrash.capture.nmi import GUEST_NEEDS_KEYS, GUEST_NEEDS_NMI, NmiResult
from wincrash.vm.guest_memory import DumpResult


def print_nmi(result: NmiResult, as_json: bool) -> None:
    """What was sent, and the panic report (or what the guest needs for one)."""
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    what = "crash keys (right Ctrl + Scroll Lock, twice) sent" if result.method == "keyboard" else "NMI injected"
    typer.echo(f"{what}: {result.vm['name']}")
    if result.panic is not None:
        typer.echo(result.panic.describe())
    else:
        typer.echo(f"note: {GUEST_NEEDS_KEYS if result.method == 'keyboard' else GUEST_NEEDS_NMI}")


def print_dump(result: DumpResult, as_json: bool, label: str | None = None) -> None:
    """Size, speed (MiB/s) and what the dump cost the guest (pause in seconds); ``label`` replaces "wrote PATH"."""
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    typer.echo(f"{label or f'wrote {result.path}'} ({result.format}, {result.size / 2**20:,.1f} MiB from "
               f"{result.guest_ram / 2**20:,.0f} MiB of guest RAM) in {result.seconds:.1f} s "
               f"({result.throughput / 2**20:,.0f} MiB/s)")
    if result.paused_seconds is not None:
        typer.echo(f"the guest was paused for {result.paused_seconds:.2f} s and is {result.status_after} again")
    else:
        typer.echo(f"the guest was already stopped ({result.status_before}) and stays {result.status_after}")


def print_capture(result: CaptureResult, as_json: bool) -> None:
    """The capture summary, then `wincrash info` of the new MEMORY.DMP (what the engineer sends on)."""
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from wincrash.describe import describe_file
    from wincrash.info.render import print_report

    if result.panic is not None:
        typer.echo(result.panic.describe())
    print_dump(result.dump, as_json=False, label=f"kept {result.elf_kept}" if result.elf_kept else "dumped memory")
    if result.streamed:
        typer.echo("MEMORY.DMP written from the dump stream (no ELF on disk)")
    elif result.not_streamed_because:
        typer.echo(f"not streamed: {result.not_streamed_because}")
    typer.echo(f"wrote {result.conversion.output}: bugcheck {result.conversion.bugcheck}")
    print_report(describe_file(result.conversion.output), as_json=False)
