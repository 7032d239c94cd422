"""What a dump-like file holds, recognised by its content (used by `info`, `grab-pagefile` and `capture`).

describe_file() raises WincrashError (exit 2) for what cannot be read or recognised, and returns
a Report for everything else; the Report's problems decide exit 0 (sound) or 1.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from construct import ConstructError

from wincrash.describe.report import Report
from wincrash.errors import WincrashError, describe_os_error
from wincrash.inputs import open_input

MIB = 1 << 20
# Magic numbers of formats we recognise but do not convert; named so the user knows what they have.
OTHER_FORMATS = (
    (b"MDMP", "user-mode minidump", "a user-mode minidump (process dump), not a kernel crash dump"),
    (b"QEVM", "qemu-savevm", "a QEMU savevm/migration stream (what `virsh save` writes)"),
    (b"HIBR", "hiberfil", "a Windows hibernation file (hiberfil.sys)"),
    (b"hibr", "hiberfil", "a Windows hibernation file (hiberfil.sys)"),
    (b"wake", "hiberfil", "a Windows hibernation file (hiberfil.sys), already resumed"),
)


def describe_file(path: Path | str) -> Report:
    """Recognise and summarise one file; raise WincrashError when it is unreadable or unknown."""
    path = Path(path)
    fh, size = open_input(path)
    with fh:
        try:
            return _describe(fh, str(path), size)
        except WincrashError:
            raise
        except (ConstructError, struct.error, ValueError, IndexError, OverflowError, UnicodeDecodeError) as exc:
            detail = " ".join(str(exc).split())[:120]
            raise WincrashError(f"{path}: malformed file ({exc.__class__.__name__}: {detail})") from None
        except OSError as exc:
            raise WincrashError(describe_os_error(exc, path)) from None


def _describe(fh: BinaryIO, path: str, size: int) -> Report:
    if size == 0:
        raise WincrashError(f"{path}: empty file")
    magic = os.pread(fh.fileno(), 16, 0)
    if magic[:8] in (b"PAGEDU64", b"PAGEDUMP"):
        return _describe_dump_or_pagefile(fh, path, size)
    if magic[:4] == b"\x7fELF":
        from wincrash.describe.elfcore import describe_elf

        return describe_elf(fh, path, size)
    # libvirt save images, compressed streams, kdump, LiME, and files that are not memory at all
    from wincrash.describe.containers import describe_container

    container = describe_container(fh, path, size)
    if container is not None:
        return container
    for signature, kind, title in OTHER_FORMATS:
        if magic.startswith(signature):
            report = Report(path=path, size=size, kind=kind, title=title)
            report.notes.append("wincrash recognises this format but does not analyse it further")
            report.unchecked = "its content (only the signature was read)"  # never called sound unread
            return report
    shown = magic[:8].hex(" ")
    raise WincrashError(f"{path}: not a recognised dump format (starts with {shown})")


def _describe_dump_or_pagefile(fh: BinaryIO, path: str, size: int) -> Report:
    from wincrash.describe.dmpfile import describe_dmp

    report = describe_dmp(fh, path, size)
    extent = report.sections["header"].get("extent")
    # Windows writes the crash dump at the start of pagefile.sys, whose size is a whole number of
    # MiB; a dump file ends where its header says. A larger MiB-multiple file is a pagefile.
    if extent is not None and size > extent and size % MIB == 0:
        report.kind = "pagefile"
        report.title = f"paging file (pagefile.sys) holding a crash dump: {report.title}"
        report.sections["pagefile"] = {"dump_bytes": extent, "pagefile_bytes": size}
        report.notes.append(f"the first {extent:,} bytes are a crash dump: `wincrash grab-pagefile` cuts it out")
    return report
