"""Symbolic names of Windows bugcheck (stop) codes, as WinDbg's `!analyze` prints them.

A support engineer recognises 0x133 faster as DPC_WATCHDOG_VIOLATION. The table (every code of
Microsoft's public bug check code reference) and the parameter meanings are data in
wincrash.formats.bugcheck; this module keeps the names other stages already use.
"""

from __future__ import annotations

from wincrash.formats.bugcheck import BUGCHECK_NAMES, bugcheck_name, parameter_meanings, subcode_meaning

LIVE_SYSTEM_DUMP = 0x161
NMI_HARDWARE_FAILURE = 0x80


def describe_bugcheck(code: int) -> str:
    """'0x00000080 NMI_HARDWARE_FAILURE', or the bare hex code when the name is unknown."""
    name = bugcheck_name(code)
    return f"0x{code:08X} {name}" if name else f"0x{code:08X} (unknown bugcheck code)"


__all__ = ["BUGCHECK_NAMES", "LIVE_SYSTEM_DUMP", "NMI_HARDWARE_FAILURE", "bugcheck_name", "describe_bugcheck",
           "parameter_meanings", "subcode_meaning"]
