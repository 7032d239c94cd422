"""The `wincrash` command line: one short function per command, no logic here.

Each command imports its implementation lazily so that `wincrash info` starts fast and a missing
optional dependency (libguestfs) only affects the commands that need it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from wincrash import __version__
from wincrash.errors import EXIT_ERROR, EXIT_INTERRUPTED, WincrashError

app = typer.Typer(
    name="wincrash",
    help="Windows crash dumps out of QEMU/KVM virtual machines, offline and without symbols.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wincrash {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Windows crash dumps out of QEMU/KVM virtual machines."""


@app.command()
def info(
    file: Annotated[Path, typer.Argument(help="A DMP, pagefile.sys, QEMU ELF dump or other dump-like file.")],
    json_out: JsonOpt = False,
) -> None:
    """Say what is in a dump-like file and whether it is sound (exit 0 sound, 1 problems, 2 unreadable)."""
    from wincrash.info import describe_file
    from wincrash.info.render import print_report

    report = describe_file(file)
    print_report(report, as_json=json_out)
    raise typer.Exit(report.exit_code)


VmArg = Annotated[str, typer.Argument(
    help="The VM: a QMP UNIX socket path, tcp:HOST:PORT, or a libvirt domain name (with --connect).")]
ConnectOpt = Annotated[str | None, typer.Option(
    "--connect", "-c", help="libvirt URI for a domain name (default qemu:///system).")]


@app.command()
def nmi(
    vm: VmArg,
    connect: ConnectOpt = None,
    keyboard: Annotated[bool, typer.Option(
        "--keyboard", help="Send right Ctrl + Scroll Lock twice instead (guest needs CrashOnCtrlScroll=1).")] = False,
    wait: Annotated[float | None, typer.Option(
        "--wait", metavar="SECONDS", help="Wait this long for the guest to report its panic (pvpanic/hv-crash).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Crash a running Windows VM on purpose: inject an NMI (bugcheck 0x80 with NMICrashDump=1)."""
    from wincrash.capture.nmi import run_nmi
    from wincrash.capture.render import print_nmi

    print_nmi(run_nmi(vm, connect, keyboard, wait), as_json=json_out)


@app.command()
def dump(
    vm: VmArg,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output file (default: <vm>-<UTC time>.elf in the current directory).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="elf (default), kdump-zlib or win-dmp.")] = "elf",
    connect: ConnectOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output file.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Take a memory dump of a running (or crashed) VM with dump-guest-memory, without crashing it."""
    from wincrash.capture.guest_memory_dump import run_dump
    from wincrash.capture.render import print_dump

    print_dump(run_dump(vm, connect, output, fmt, force), as_json=json_out)


@app.command()
def capture(
    vm: VmArg,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output MEMORY.DMP (default: MEMORY.DMP in the current directory).")] = None,
    crash: Annotated[bool, typer.Option(
        "--crash", help="First inject an NMI and wait for the panic, so the dump holds bugcheck 0x80.")] = False,
    keep_elf: Annotated[bool, typer.Option("--keep-elf", help="Keep QEMU's ELF dump next to the output.")] = False,
    wait: Annotated[float, typer.Option(
        "--wait", metavar="SECONDS", help="With --crash: how long to wait for the panic.")] = 120,
    fmt: Annotated[str, typer.Option("--format", help="full (DumpType 1), bitmap or kernel (DumpType 5).")] = "full",
    connect: ConnectOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output files.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """One shot for runbooks: [NMI + wait for the panic,] dump memory, convert to MEMORY.DMP, show `info`."""
    from wincrash.capture.crash_capture import run_capture
    from wincrash.capture.render import print_capture

    print_capture(run_capture(vm, connect, output, crash, keep_elf, wait, fmt, force), as_json=json_out)


@app.command()
def convert(
    input_file: Annotated[Path, typer.Argument(
        metavar="INPUT", help="QEMU dump-guest-memory ELF (or virsh dump --memory-only), raw image or DMP.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output MEMORY.DMP (default: INPUT with .dmp).")] = None,
    profile: Annotated[str, typer.Option(
        "--profile", help="auto, or the Windows you expect (e.g. Win10x64, Win7SP1x64): checked against memory.")
    ] = "auto",
    fmt: Annotated[str, typer.Option("--format", help="full (DumpType 1), bitmap (DumpType 5 'FDMP', every page; "
                                     "zero pages are holes) or kernel (DumpType 5 'SDMP', the kernel's memory only).")
                   ] = "full",
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output; convert despite a profile mismatch.")
                     ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Turn a QEMU memory dump into a WinDbg-loadable MEMORY.DMP, offline and without symbols."""
    from wincrash.convert.pipeline import convert_file, default_output
    from wincrash.convert.render import print_conversion

    result = convert_file(input_file, output or default_output(input_file), profile, fmt, force,
                          progress=not json_out)
    print_conversion(result, as_json=json_out)


@app.command("grab-pagefile")
def grab_pagefile(
    disks: Annotated[list[Path], typer.Argument(
        help="Every disk image of the VM (qcow2, raw, vmdk, vhdx...); opened read-only.")],
    out_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the copied files.")] = Path("."),
    force_share: Annotated[bool, typer.Option(
        "--force-share", help="Read a disk a running VM holds locked (the data may be inconsistent).")] = False,
    recovery_key: Annotated[str | None, typer.Option(
        "--recovery-key", help="BitLocker recovery key (48 digits) for an encrypted volume.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files already in the folder.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy pagefile.sys, MEMORY.DMP and minidumps out of an offline VM's disks; cut out the pagefile's dump."""
    from wincrash.disk.grab import run

    raise typer.Exit(run(disks, out_dir, force_share, recovery_key, force, json_out))


@app.command()
def prepare(
    disk: Annotated[Path, typer.Argument(help="The Windows system disk image of a shut-down VM.")],
    dump_type: Annotated[str, typer.Option(
        "--dump", help="complete, kernel, automatic or active.")] = "automatic",
    nmi_crash: Annotated[bool, typer.Option("--nmi/--no-nmi", help="NMICrashDump=1 (crash on NMI).")] = True,
    keyboard: Annotated[bool, typer.Option(
        "--keyboard", help="CrashOnCtrlScroll=1 for PS/2 and USB keyboards.")] = False,
    no_auto_reboot: Annotated[bool, typer.Option(
        "--no-auto-reboot/--auto-reboot", help="AutoReboot=0: stay on the blue screen (default), "
        "or leave AutoReboot as it is.")] = True,
    ram: Annotated[str | None, typer.Option(
        "--ram", help="The VM's memory (e.g. 8G), to check the paging file can hold a complete dump.")] = None,
    backup_dir: Annotated[Path | None, typer.Option(
        "--backup-dir", help="Where to keep the original SYSTEM hive (default: current folder).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the changes, write nothing.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Set the crash-dump registry values (CrashControl) in an offline Windows guest's SYSTEM hive."""
    from wincrash.disk.crashcontrol import run

    raise typer.Exit(run(disk, dump_type, nmi_crash, keyboard, no_auto_reboot, dry_run, ram, backup_dir, json_out))


@app.command()
def doctor(
    vm: Annotated[str | None, typer.Argument(
        help="Also check this VM: QMP socket path, tcp:HOST:PORT or libvirt domain name.")] = None,
    connect: ConnectOpt = None,
    dump_dir: Annotated[Path | None, typer.Option(
        "--dump-dir", help="Where dumps will go, for the free-space check (default: current folder).")] = None,
    host_root: Annotated[Path | None, typer.Option(
        "--host-root", hidden=True, help="Read /sys, /proc and /dev below this folder (tests).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the host (and a VM) for Windows crash dumps and Hyper-V in KVM; print the fix for each problem.

    Exit 0 when every check passes, 1 when something needs fixing, 2 when doctor could not run.
    """
    from wincrash.doctor.render import print_doctor
    from wincrash.doctor.run import run_doctor

    report = run_doctor(vm, connect, dump_dir, host_root)
    print_doctor(report, as_json=json_out)
    raise typer.Exit(report.exit_code)


def main() -> None:
    """Entry point: run the app and turn every failure into one line on stderr and an exit code.

    Click (inside typer) handles usage errors, --help and Exit itself in standalone mode; what
    reaches us is ours (WincrashError), Ctrl-C, or a bug, which still gets one line, no traceback.
    """
    try:
        app()
    except WincrashError as exc:
        print(f"wincrash: error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("wincrash: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the user must never see a traceback
        if os.environ.get("WINCRASH_DEBUG"):
            raise
        print(f"wincrash: internal error: {exc.__class__.__name__}: {exc} (set WINCRASH_DEBUG=1 for details)",
              file=sys.stderr)
        sys.exit(EXIT_ERROR)
