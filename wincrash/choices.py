"""The fixed choices of command-line options, as enums the CLI checks at the door.

Each is a StrEnum, so a member IS its string: domain entry points that take ``str`` accept them,
and ``--json`` output shows the plain value. Kept in one light module (no heavy imports) so that
building the CLI stays fast; tests/cli/test_cli.py checks that each enum matches the domain
table it mirrors (convert's FORMATS, capture's DUMP_FORMATS, crashcontrol's DUMP_TYPES, the profiles).
"""

from __future__ import annotations

from enum import StrEnum

from wincrash.windows.profiles import profile_names


class DmpFormat(StrEnum):
    """MEMORY.DMP layouts convert/capture write: DumpType 1 (full), or 5 (DUMP_HEADER64 0xF98) with an 'FDMP'
    summary (bitmap: every page) or an 'SDMP' one (kernel: the kernel's memory only)."""

    FULL = "full"
    BITMAP = "bitmap"
    KERNEL = "kernel"


class QemuDumpFormat(StrEnum):
    """dump-guest-memory formats QEMU 7.2 offers here (kdump-lzo/snappy are not built in)."""

    ELF = "elf"
    KDUMP_ZLIB = "kdump-zlib"
    WIN_DMP = "win-dmp"


class CrashDumpKind(StrEnum):
    """`prepare --dump`: what CrashControl\\CrashDumpEnabled Windows gets (see disk.crashcontrol.DUMP_TYPES)."""

    COMPLETE = "complete"
    KERNEL = "kernel"
    AUTOMATIC = "automatic"
    ACTIVE = "active"


# Volatility-2 style profile names (windows/profiles.py) plus "auto"; names, so matched case-insensitively.
Profile = StrEnum("Profile", [("AUTO", "auto"), *((name.upper(), name) for name in profile_names())])  # type: ignore[misc]
Profile.__doc__ = "`convert --profile`: auto, or the Windows the user expects (checked against memory)."
