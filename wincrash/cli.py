"""The `wincrash` command line: each command validates its options, calls ONE entry point, renders, exits.

Validation happens at the door: choices are enums (wincrash.choices) that typer checks, input
files must exist and be readable, sizes and times parse, before any slow work. Every usage error
is one `wincrash: error: ...` line (never typer's usage box). Results are shown by
wincrash.render (warnings on stderr, text or --json on stdout) and the exit code is the result's.

Each command imports its implementation lazily so that `wincrash info` starts fast and a missing
optional dependency (libguestfs) only affects the commands that need it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from wincrash import __version__
from wincrash.choices import CrashDumpKind, DmpFormat, Profile, QemuDumpFormat
from wincrash.door import PROG, Command, Group, positive_seconds, readable, recovery_key, size, usage_message
from wincrash.errors import EXIT_ERROR, EXIT_INTERRUPTED, WincrashError
from wincrash.render import error_line, render

app = typer.Typer(
    name=PROG,
    cls=Group,
    help="Windows crash dumps out of QEMU/KVM virtual machines, offline and without symbols.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _command(name: str | None = None) -> Any:  # noqa: ANN401 - typer's decorator
    return app.command(name, cls=Command)


# --- shared options -------------------------------------------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
VmArg = Annotated[str, typer.Argument(
    metavar="VM", help="The VM: a QMP UNIX socket path, tcp:HOST:PORT, or a libvirt domain name (with --connect).")]
ConnectOpt = Annotated[str | None, typer.Option(
    "--connect", "-c", metavar="URI", help="libvirt URI for a domain name (default qemu:///system).")]
DISK_HINT = "run as a user who can read the VM's disks, e.g. with sudo"  # as disk.image says


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Windows crash dumps out of QEMU/KVM virtual machines."""


@_command()
def info(
    file: Annotated[Path, typer.Argument(
        metavar="FILE", callback=readable("dump file"),
        help="A DMP, pagefile.sys, QEMU ELF dump or other dump-like file.")],
    json_out: JsonOpt = False,
) -> None:
    """Say what is in a dump-like file and whether it is sound (exit 0 sound, 1 problems, 2 unreadable)."""
    from wincrash.describe import describe_file
    from wincrash.info.render import print_report

    raise typer.Exit(render(describe_file(file), as_json=json_out, text=print_report))


@_command()
def nmi(
    vm: VmArg,
    connect: ConnectOpt = None,
    keyboard: Annotated[bool, typer.Option(
        "--keyboard", help="Send right Ctrl + Scroll Lock twice instead (guest needs CrashOnCtrlScroll=1).")] = False,
    wait: Annotated[float | None, typer.Option(
        "--wait", metavar="SECONDS", callback=positive_seconds,
        help="Wait this long for the guest to report its panic (pvpanic/hv-crash).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Crash a running Windows VM on purpose: inject an NMI (bugcheck 0x80 with NMICrashDump=1)."""
    from wincrash.capture.nmi import run_nmi
    from wincrash.capture.render import print_nmi

    result = run_nmi(vm=vm, connect=connect, keyboard=keyboard, wait=wait)
    raise typer.Exit(render(result, as_json=json_out, text=lambda r: print_nmi(r, as_json=False)))


@_command()
def dump(
    vm: VmArg,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE",
        help="Output file (default: <vm>-<UTC time>.elf in the current directory).")] = None,
    fmt: Annotated[QemuDumpFormat, typer.Option(
        "--format", case_sensitive=False, metavar="[elf|kdump-zlib|win-dmp]",
        help="QEMU's dump format: elf (default; what convert reads), kdump-zlib or win-dmp.")] = QemuDumpFormat.ELF,
    connect: ConnectOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output file.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Take a memory dump of a running (or crashed) VM with dump-guest-memory, without crashing it."""
    from wincrash.capture.guest_memory_dump import run_dump
    from wincrash.capture.render import print_dump

    result = run_dump(vm=vm, connect=connect, out=output, fmt=fmt, force=force)
    raise typer.Exit(render(result, as_json=json_out, text=lambda r: print_dump(r, as_json=False)))


@_command()
def capture(
    vm: VmArg,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", help="Output MEMORY.DMP (default: MEMORY.DMP in the current directory).")
    ] = None,
    crash: Annotated[bool, typer.Option(
        "--crash", help="First inject an NMI and wait for the panic, so the dump holds bugcheck 0x80.")] = False,
    keep_elf: Annotated[bool, typer.Option("--keep-elf", help="Keep QEMU's ELF dump next to the output.")] = False,
    wait: Annotated[float, typer.Option(
        "--wait", metavar="SECONDS", callback=positive_seconds, help="With --crash: how long to wait for the panic.")
    ] = 120,
    fmt: Annotated[DmpFormat, typer.Option(
        "--format", case_sensitive=False, metavar="[full|bitmap|kernel]",
        help="full (DumpType 1), bitmap or kernel (DumpType 5).")] = DmpFormat.FULL,
    connect: ConnectOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output files.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """One shot for runbooks: [NMI + wait for the panic,] dump memory, convert to MEMORY.DMP, show `info`."""
    from wincrash.capture.crash_capture import run_capture
    from wincrash.capture.render import print_capture

    result = run_capture(vm=vm, connect=connect, out=output, crash=crash, keep_elf=keep_elf, wait=wait, fmt=fmt,
                         force=force)
    raise typer.Exit(render(result, as_json=json_out, text=lambda r: print_capture(r, as_json=False)))


@_command()
def convert(
    input_file: Annotated[Path, typer.Argument(
        metavar="INPUT", callback=readable("dump file"),
        help="QEMU dump-guest-memory ELF (or virsh dump --memory-only), raw image or DMP.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", help="Output MEMORY.DMP (default: INPUT with .dmp).")] = None,
    profile: Annotated[Profile, typer.Option(
        "--profile", case_sensitive=False, metavar="PROFILE",
        help="auto, or the Windows you expect (e.g. Win10x64, Win7SP1x64, Win10x64_19045; any letter case): "
             "checked against memory.")] = Profile.AUTO,  # type: ignore[attr-defined]
    fmt: Annotated[DmpFormat, typer.Option(
        "--format", case_sensitive=False, metavar="[full|bitmap|kernel]",
        help="full (DumpType 1), bitmap (DumpType 5 'FDMP', every page; zero pages are holes) or kernel "
             "(DumpType 5 'SDMP', the kernel's memory only).")] = DmpFormat.FULL,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite the output; convert despite a profile mismatch.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Turn a QEMU memory dump into a WinDbg-loadable MEMORY.DMP, offline and without symbols."""
    from wincrash.convert.pipeline import convert_file, default_output
    from wincrash.convert.render import print_conversion

    result = convert_file(input_path=input_file, output_path=output or default_output(input_file),
                          profile=profile, fmt=fmt, force=force, progress=not json_out)
    raise typer.Exit(render(result, as_json=json_out, text=print_conversion))


@_command("grab-pagefile")
def grab_pagefile(
    disks: Annotated[list[Path], typer.Argument(
        metavar="DISK...", callback=readable("disk image", DISK_HINT),
        help="Every disk image of the VM (qcow2, raw, vmdk, vhdx...); opened read-only.")],
    out_dir: Annotated[Path, typer.Option(
        "--output-dir", "-o", metavar="DIR", help="Folder for the copied files.")] = Path("."),
    force_share: Annotated[bool, typer.Option(
        "--force-share", help="Read a disk a running VM holds locked (the data may be inconsistent).")] = False,
    recovery_key: Annotated[str | None, typer.Option(
        "--recovery-key", metavar="KEY", callback=recovery_key,
        help="BitLocker recovery key (48 digits) for an encrypted volume.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files already in the folder.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy pagefile.sys, MEMORY.DMP and minidumps out of an offline VM's disks; cut out the pagefile's dump."""
    from wincrash.disk.grab import grab
    from wincrash.disk.render import print_grab

    result = grab(disks=disks, out_dir=out_dir, force_share=force_share, recovery_key=recovery_key, force=force)
    raise typer.Exit(render(result, as_json=json_out, text=print_grab))


@_command()
def prepare(
    disk: Annotated[Path, typer.Argument(
        metavar="DISK", callback=readable("disk image", DISK_HINT),
        help="The Windows system disk image of a shut-down VM.")],
    dump_kind: Annotated[CrashDumpKind, typer.Option(
        "--dump", case_sensitive=False, metavar="[complete|kernel|automatic|active]",
        help="The dump Windows writes (CrashDumpEnabled).")] = CrashDumpKind.AUTOMATIC,
    nmi_crash: Annotated[bool, typer.Option("--nmi/--no-nmi", help="NMICrashDump=1 (crash on NMI).")] = True,
    keyboard: Annotated[bool, typer.Option(
        "--keyboard", help="CrashOnCtrlScroll=1 for PS/2 and USB keyboards.")] = False,
    no_auto_reboot: Annotated[bool, typer.Option(
        "--no-auto-reboot/--auto-reboot", help="AutoReboot=0: stay on the blue screen (default), "
        "or leave AutoReboot as it is.")] = True,
    ram: Annotated[str | None, typer.Option(
        "--ram", metavar="SIZE", callback=size,
        help="The VM's memory (e.g. 8G), to check the paging file can hold a complete dump.")] = None,
    backup_dir: Annotated[Path | None, typer.Option(
        "--backup-dir", metavar="DIR",
        help="Where to keep the original SYSTEM hive (default: the disk image's folder).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the changes, write nothing.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Set the crash-dump registry values (CrashControl) in an offline Windows guest's SYSTEM hive."""
    from wincrash.disk.crashcontrol import parse_size, prepare
    from wincrash.disk.render import print_prepare

    result = prepare(disk=disk, dump=dump_kind, nmi=nmi_crash, keyboard=keyboard, no_auto_reboot=no_auto_reboot,
                     dry_run=dry_run, ram=parse_size(ram), backup_dir=backup_dir)
    raise typer.Exit(render(result, as_json=json_out, text=print_prepare))


@_command()
def doctor(
    vm: Annotated[str | None, typer.Argument(
        metavar="VM", help="Also check this VM: QMP socket path, tcp:HOST:PORT or libvirt domain name.")] = None,
    connect: ConnectOpt = None,
    dump_dir: Annotated[Path | None, typer.Option(
        "--dump-dir", metavar="DIR", help="Where dumps will go, for the free-space check (default: current folder).")
    ] = None,
    host_root: Annotated[Path | None, typer.Option(
        "--host-root", metavar="DIR", hidden=True, help="Read /sys, /proc and /dev below this folder (tests).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the host (and a VM) for Windows crash dumps and Hyper-V in KVM; print the fix for each problem.

    Exit 0 when every check passes, 1 when something needs fixing, 2 when doctor could not run.
    """
    from wincrash.doctor.render import print_doctor
    from wincrash.doctor.run import run_doctor

    report = run_doctor(vm=vm, connect=connect, dump_dir=dump_dir, host_root=host_root)
    raise typer.Exit(render(report, as_json=json_out, text=lambda r: print_doctor(r, as_json=False)))


def main() -> None:
    """Entry point: run the app and turn every failure into one line on stderr and an exit code.

    typer runs without its standalone mode, so usage errors reach us (one `wincrash: error:` line,
    exit 2) instead of its usage box; WincrashError gives its message and exit code; Ctrl-C exits
    130 and SIGTERM/SIGHUP 143/129 (wincrash.interrupts: handled like Ctrl-C, so partial outputs are
    removed), each with "wincrash: interrupted"; a bug still gets one line, no traceback
    (WINCRASH_DEBUG=1 shows it).
    """
    from wincrash import interrupts

    interrupts.install()
    try:
        code = app(prog_name=PROG, standalone_mode=False)
    except WincrashError as exc:
        if exc.exit_code == EXIT_INTERRUPTED:
            _interrupted(exc.message)
        print(error_line(exc.message), file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # bare `wincrash`: the help was shown, exit 2
            print(error_line(usage_message(exc)), file=sys.stderr)
        sys.exit(exc.exit_code if exc.exit_code else EXIT_ERROR)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted()
    except Exception as exc:  # noqa: BLE001 - the user must never see a traceback
        if os.environ.get("WINCRASH_DEBUG"):
            raise
        print(f"{PROG}: internal error: {exc.__class__.__name__}: {exc} (set WINCRASH_DEBUG=1 for details)",
              file=sys.stderr)
        sys.exit(EXIT_ERROR)
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C inside a command into exit 130
        _interrupted()
    sys.exit(code or 0)


def _interrupted(detail: str | None = None) -> None:
    """Ctrl-C, SIGTERM or SIGHUP: "wincrash: interrupted[: what was not done]", exit 130/143/129."""
    from wincrash.interrupts import exit_code

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the message short
    print(f"{PROG}: interrupted" + (f": {detail}" if detail else ""), file=sys.stderr)
    sys.exit(exit_code(EXIT_INTERRUPTED))
