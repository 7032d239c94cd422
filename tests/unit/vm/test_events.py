"""Decoding GUEST_PANICKED (pvpanic, and Hyper-V crash MSRs with the bugcheck code)."""

from __future__ import annotations

from wincrash.vm.guest_memory import explain_dump_error
from wincrash.vm.panic import parse_panic_event


def test_hyperv_panic_carries_bugcheck() -> None:
    data = {"action": "pause", "info": {"type": "hyper-v", "arg1": 0x80, "arg2": 0x4F4454, "arg3": 0,
                                       "arg4": 0, "arg5": 7}}
    info = parse_panic_event("GUEST_PANICKED", data)
    assert info.source == "hyper-v" and info.bugcheck_code == 0x80
    assert info.parameters == [0x4F4454, 0, 0, 7]
    assert "bugcheck 0x80" in info.describe() and "0x00000000004f4454" in info.describe()


def test_pvpanic_has_no_code() -> None:
    info = parse_panic_event("GUEST_PANICKED", {"action": "pause"})
    assert info.source == "pvpanic" and info.bugcheck_code is None and "bugcheck" not in info.describe()


def test_win_dmp_error_is_explained() -> None:
    text = explain_dump_error("win-dmp", "win-dump: invalid vmcoreinfo note size")
    assert "-device vmcoreinfo" in text and "fwcfg" in text
