"""`info` for ELF files: QEMU dump-guest-memory cores (RAM blocks, vCPUs), other ELF cores named."""

from __future__ import annotations

from typing import BinaryIO

from wincrash.describe.report import Report
from wincrash.formats.elf import EM_X86_64
from wincrash.memory.qemu_elf import cpu_summary, machine_name, read_elf_layout


def describe_elf(fh: BinaryIO, path: str, size: int) -> Report:
    """Summarise an ELF core; QEMU's notes make it a guest memory dump we can convert."""
    layout = read_elf_layout(fh, size)
    is_qemu = bool(layout.cpus)
    report = Report(
        path=path, size=size, kind="qemu-elf" if is_qemu else "elf-core",
        title=(f"QEMU guest memory dump (dump-guest-memory ELF, {machine_name(layout.machine)})" if is_qemu
               else f"ELF core dump ({machine_name(layout.machine)}) without QEMU CPU notes"),
    )
    ram = sum(s.size for s in layout.segments)
    report.sections["memory"] = {
        "ram_blocks": len(layout.segments),
        "bytes": ram,
        "segments": [{"start": f"0x{s.paddr:x}", "end": f"0x{s.paddr + s.size:x}", "size": s.size,
                      "file_offset": f"0x{s.offset:x}"} for s in layout.segments],
    }
    report.sections["vcpus"] = len(layout.cpus) or len(layout.prstatus)
    report.sections["cpus"] = [cpu_summary(i, cpu) for i, cpu in enumerate(layout.cpus)]
    for start, end in layout.missing_ranges:
        report.problems.append(f"truncated: guest-physical 0x{start:x}-0x{end:x} is missing from the file")
    if not layout.segments:
        report.problems.append("no PT_LOAD segments: the file holds no memory")
    if not is_qemu:
        report.notes.append("no 'QEMU' CPU notes: not written by QEMU dump-guest-memory (registers unknown)")
    elif layout.machine != EM_X86_64:
        report.notes.append("the vCPUs were not in long mode when the dump was taken (EM_386): 32-bit guest or "
                            "firmware")
    if layout.cpus and layout.prstatus and len(layout.cpus) != len(layout.prstatus):
        report.problems.append(f"{len(layout.prstatus)} NT_PRSTATUS notes but {len(layout.cpus)} QEMU CPU notes")
    return report
