"""Cut the crash dump out of a copied pagefile.sys.

When Windows crashes it writes the dump into the paging file (the only file it can safely write
at that moment) starting at offset 0 with the usual 'PAGEDU64' / 'PAGEDUMP' header, and moves it
to MEMORY.DMP on the next boot. A guest that never boots again keeps it there. The dump's own
header says how long it is (dmp.reader.dump_extent); the rest of the pagefile is paging data.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wincrash.errors import WincrashError
from wincrash.output import atomic_output
from wincrash.progress import byte_progress

DUMP_SIGNATURES = (b"PAGEDU64", b"PAGEDUMP")
CHUNK = 8 << 20


def starts_with_dump(path: Path) -> bool:
    """True when the file begins with a crash dump header."""
    with open(path, "rb") as fh:
        return fh.read(8) in DUMP_SIGNATURES


@dataclass
class EmbeddedDump:
    """The dump cut out of a pagefile, and what `info` thinks of it."""

    path: Path
    size: int
    extent: int  # what the header says; > size when the pagefile is too short
    kind: str = ""
    bugcheck: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    sound: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size": self.size, "extent": self.extent, "kind": self.kind,
                "bugcheck": self.bugcheck, "problems": self.problems, "sound": self.sound}


def extract_dump(pagefile: Path, out: Path, force: bool = False, progress: bool = True,
                 inputs: Iterable[Path] = ()) -> EmbeddedDump:
    """Write the dump at the start of ``pagefile`` to ``out``, trimmed to its header's extent, and check it.

    ``out`` is never ``pagefile`` nor one of ``inputs`` (WincrashError), whatever ``force`` says.
    """
    from wincrash.describe import describe_file  # noqa: PLC0415
    from wincrash.dmp.reader import dump_extent  # noqa: PLC0415 - keeps `grab-pagefile` import light

    with open(pagefile, "rb") as src:
        extent = dump_extent(src)
        available = os.fstat(src.fileno()).st_size
        size = min(extent, available)
        src.seek(0)
        with atomic_output(out, force, [pagefile, *inputs]) as dst, \
                byte_progress(f"cutting {out.name}", size, progress) as advance:
            left = size
            while left:
                block = src.read(min(CHUNK, left))
                if not block:
                    raise WincrashError(f"{pagefile}: shorter than expected while copying the dump")
                dst.write(block)
                left -= len(block)
                advance(len(block))
    dump = EmbeddedDump(path=out, size=size, extent=extent)
    if extent > available:
        dump.problems.append(f"the pagefile ({available:,} bytes) is shorter than the dump it holds "
                             f"({extent:,} bytes): the dump is truncated")
    try:
        report = describe_file(out)
    except WincrashError as exc:
        dump.problems.append(f"info cannot read the cut dump: {exc}")
        return dump
    dump.kind = report.kind
    dump.bugcheck = report.sections.get("bugcheck")
    dump.problems.extend(report.problems)
    dump.sound = not dump.problems
    return dump
