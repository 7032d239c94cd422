"""Command-line wrapper of the generator (scripts/make_guest.py): arguments in, files out, one-line errors."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from wincrash.errors import WincrashError
from wincrash.output import atomic_output
from wincrash_testkit.synth.guest import SUPPORTED_BUILDS, GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf, write_raw


def _int(text: str) -> int:
    return int(text, 0)


def _cpu_list(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x, 0) for x in text.split(",") if x.strip())
    except ValueError:
        raise WincrashError(f"--hv-cpus: not a comma-separated list of CPU numbers: {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_guest.py", description=(
        "Generate a synthetic Windows x64 guest as a QEMU dump-guest-memory ELF (sparse), with its ground truth."))
    p.add_argument("--build", type=int, default=19041, choices=SUPPORTED_BUILDS)
    p.add_argument("--cpus", type=int, default=2, help="vCPUs, 1..64")
    p.add_argument("--ram-mib", type=int, default=1024, help="guest RAM in MiB, 256..65536")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--crashed", action="store_true", help="KiBugCheckData holds a bugcheck (default 0x80 NMI)")
    p.add_argument("--bugcheck-code", type=_int, default=0x80)
    p.add_argument("--filler-mib", type=int, default=0,
                   help="MiB of random-content RAM pages (benchmarks; written, never held in memory)")
    p.add_argument("--hyperv", action="store_true",
                   help="root partition under Hyper-V with VBS: hvix64 and securekernel address spaces")
    p.add_argument("--hv-cpus", default=None,
                   help="with --hyperv: comma-separated vCPUs whose QEMU notes hold the hypervisor's state "
                        "(default: all)")
    p.add_argument("--out", type=Path, required=True, help="QEMU ELF dump to write")
    p.add_argument("--truth", type=Path, help="also write the ground truth as JSON")
    p.add_argument("--raw", type=Path, help="also write a raw physical memory image")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    return p


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        spec = GuestSpec(build=args.build, cpus=args.cpus, ram_mib=args.ram_mib, seed=args.seed,
                         crashed=args.crashed, bugcheck_code=args.bugcheck_code, hyperv=args.hyperv,
                         hv_cpus=_cpu_list(args.hv_cpus), filler_mib=args.filler_mib)
        try:
            spec.validate()
        except ValueError as exc:
            raise WincrashError(str(exc)) from exc
        start = time.monotonic()
        guest = generate(spec)
        with atomic_output(args.out, args.force) as fh:
            size = write_qemu_elf(fh, guest)
        if args.raw:
            with atomic_output(args.raw, args.force) as fh:
                write_raw(fh, guest)
        if args.truth:
            with atomic_output(args.truth, args.force) as fh:
                fh.write(json.dumps(guest.truth, indent=1).encode())
    except WincrashError as exc:
        print(f"make_guest: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    pages = len(guest.mem.pages) + 512 * len(guest.mem.filler)
    hv = ""
    if spec.hyperv:
        hv_cpus = guest.truth["hyperv"]["hv_cpus"]
        hv = f", Hyper-V (hypervisor context: CPUs {'all' if len(hv_cpus) == spec.cpus else hv_cpus})"
    print(f"{args.out}: build {spec.build}, {spec.cpus} vCPU, {spec.ram_mib} MiB{hv} ({size:,} bytes, "
          f"{pages} pages with data) in {time.monotonic() - start:.2f} s", file=sys.stderr)
    return 0
