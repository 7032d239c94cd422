"""Find Windows inside physical memory without symbols: three stages, each returning frozen values.

    find_kernel(source)              -> KernelView   (windows/kernel.py: DTB, AddressSpace, ntoskrnl)
    find_kdbg(kernel)                -> KdbgBlock    (windows/kdbg.py: KDDEBUGGER_DATA64, decoded)
    read_facts(source, kernel, kdbg) -> WindowsFacts (windows/facts.py: version, CPUs, bugcheck, runs)

Every fact records how it was found, and every failed attempt is kept so that an error can say
what was tried.
"""

from __future__ import annotations

from wincrash.memory.source import PhysicalSource
from wincrash.windows.facts import WindowsFacts, read_facts
from wincrash.windows.kdbg import find_kdbg
from wincrash.windows.kernel import find_kernel

__all__ = ["WindowsFacts", "locate_windows"]


def locate_windows(source: PhysicalSource) -> WindowsFacts:
    """Find Windows in ``source``.

    Raises WincrashError saying what was tried when no ntoskrnl is found ("no Windows kernel
    found: ...") or when ntoskrnl holds no KDBG ("no Windows kernel debugger data (KDBG) found: ...").
    """
    kernel = find_kernel(source)
    header = source.dump_header  # a DMP input names its KDBG: looked at first
    return read_facts(source, kernel, find_kdbg(kernel, header.kd_debugger_data_block if header else None))
