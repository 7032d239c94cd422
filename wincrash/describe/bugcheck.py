"""The `bugcheck` section of a dump's report: code, name and what each of the four parameters means.

Names and meanings come from wincrash.formats.bugcheck (Microsoft's public bug check code
reference); this module only shapes them for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wincrash.windows.bugcheck import bugcheck_name, describe_bugcheck, parameter_meanings, subcode_meaning


def bugcheck_section(code: int, parameters: Sequence[int]) -> dict[str, Any]:
    """{'code', 'name', 'text', 'parameters', and when the code is a common one 'meaning': rows of
    (parameter number, value, what it means)}; values are 0x-hex strings, as WinDbg shows them."""
    section: dict[str, Any] = {
        "code": f"0x{code:x}",
        "name": bugcheck_name(code),
        "text": describe_bugcheck(code),
        "parameters": [f"0x{p:x}" for p in parameters],
    }
    meanings = parameter_meanings(code)
    if meanings is not None:
        rows = [{"parameter": i + 1, "value": f"0x{value:x}", "meaning": meaning}
                for i, (value, meaning) in enumerate(zip(parameters, meanings, strict=False))]
        sub = subcode_meaning(code, parameters[0]) if parameters else None
        if sub is not None:
            rows[0]["meaning"] = f"{rows[0]['meaning']}: {sub}"
        section["meaning"] = rows
    return section
