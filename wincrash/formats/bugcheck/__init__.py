"""Windows bug check (stop) codes: names for every code in Microsoft's public bug check code
reference, and what the four parameters mean for the common ones.

The tables live in names_classic.py (0x01-0xFF), names_modern.py (0x100 on, live-dump codes,
special high codes) and parameters.py; this module parses and looks them up.
"""

from __future__ import annotations

from wincrash.formats.bugcheck import names_classic, names_modern
from wincrash.formats.bugcheck.parameters import PARAMETERS, SUBCODES

# Codes with bit 28 set are the "_M" variants Windows raises with extra information
# (0x1000007E); they share the meaning of the base code.
M_FLAG = 0x10000000


def _parse(table: str) -> dict[int, str]:
    entries: dict[int, str] = {}
    for line in table.split("\n"):
        if line.strip():
            code, name = line.split()
            entries[int(code, 16)] = name
    return entries


BUGCHECK_NAMES: dict[int, str] = {**_parse(names_classic.TABLE), **_parse(names_modern.TABLE)}


def base_code(code: int) -> int:
    """The code without the _M flag when it is an _M variant of a listed code, else the code itself."""
    if code & M_FLAG and (code & ~M_FLAG) in BUGCHECK_NAMES:
        return code & ~M_FLAG
    return code


def bugcheck_name(code: int) -> str | None:
    """The symbolic name of a bug check code (e.g. 0x133 -> 'DPC_WATCHDOG_VIOLATION'), or None."""
    if code in BUGCHECK_NAMES:
        return BUGCHECK_NAMES[code]
    base = base_code(code)
    return BUGCHECK_NAMES[base] + "_M" if base != code else None


def parameter_meanings(code: int) -> tuple[str, str, str, str] | None:
    """What parameters 1-4 mean for ``code`` (or its base code), or None when not in the table."""
    return PARAMETERS.get(code) or PARAMETERS.get(base_code(code))


def subcode_meaning(code: int, parameter1: int) -> str | None:
    """What parameter 1's value means for codes whose parameter 1 is a small sub-code, or None."""
    table = SUBCODES.get(code) or SUBCODES.get(base_code(code)) or {}
    return table.get(parameter1)
