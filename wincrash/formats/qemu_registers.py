"""QEMU's HMP ``info registers -a`` text, read into the shape of the ELF 'QEMU' note (QEMUCPUState).

The monitor gives a running VM's registers without dumping it; wincrash uses them to find Windows
before a streamed dump starts (capture). The text format is QEMU's x86_cpu_dump_state() (target/i386/
cpu-dump.c): ``CPU#n`` blocks with ``RAX=``/``EAX=`` general registers, ``CS =sel base limit flags``
segment lines, ``GDT=/IDT= base limit`` and ``CR0..CR4``. Registers the text lacks (KernelGSBase)
are 0. The containers are what QEMUCPUState.parse() returns, so every note reader takes them.
"""

from __future__ import annotations

import re

from construct import Container

from wincrash.formats.elf import QEMU_CPUSTATE_SIZE, QEMU_GPR_NAMES, QEMU_SEGMENT_NAMES, QEMUCPUState

_PAIR = re.compile(r"\b([A-Z][A-Z0-9]*)\s*=\s*([0-9a-f]+)\b")
_SEGMENT = re.compile(r"^(ES|CS|SS|DS|FS|GS|LDT|TR)\s*=([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+)", re.M)
_TABLE = re.compile(r"^(GDT|IDT)=\s+([0-9a-f]+) ([0-9a-f]+)", re.M)


def _cpu(block: str) -> Container:
    values = {name: int(value, 16) for name, value in _PAIR.findall(block)}
    state: dict[str, object] = {"version": 1, "size": QEMU_CPUSTATE_SIZE}
    for gpr in QEMU_GPR_NAMES:
        legacy = "E" + gpr[1:].upper() if not gpr[1:].isdigit() and not gpr.startswith("r1") else None
        state[gpr] = values.get(gpr.upper(), values.get(legacy or "", 0))
    state["rip"] = values.get("RIP", values.get("EIP", 0))
    state["rflags"] = values.get("RFL", values.get("EFL", 0))
    segments = {name.lower(): dict(selector=int(sel, 16), base=int(base, 16), limit=int(limit, 16),
                                   flags=int(flags, 16), pad=0)
                for name, sel, base, limit, flags in _SEGMENT.findall(block)}
    segments.update({name.lower(): dict(selector=0, base=int(base, 16), limit=int(limit, 16), flags=0, pad=0)
                     for name, base, limit in _TABLE.findall(block)})
    for name in QEMU_SEGMENT_NAMES:
        state[name] = segments.get(name, dict(selector=0, base=0, limit=0, flags=0, pad=0))
    state["cr"] = [values.get(f"CR{i}", 0) for i in range(5)]
    state["kernel_gs_base"] = 0
    return QEMUCPUState.parse(QEMUCPUState.build(state))


def parse_info_registers(text: str) -> list[Container]:
    """One QEMUCPUState-shaped container per ``CPU#n`` block of ``info registers -a``, in CPU order.

    Returns [] for text without such blocks (another architecture, or an error message).
    """
    blocks = re.split(r"^CPU#\d+\s*$", text, flags=re.M)[1:]
    return [_cpu(block) for block in blocks if "CR0=" in block]
