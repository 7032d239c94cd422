"""Physical memory sources: guest-physical ranges mapped to byte ranges of an input file.

open_source() detects the container format by content (FORMATS, one class per format, each only
mapping guest-physical ranges to file ranges) and wraps its MemoryMap in a PhysicalSource.

Analysis reads small pieces (read()), the writers copy whole ranges kernel-side from the file
(extents()), so a multi-GiB conversion never pulls every page through Python. Absent memory reads
as zeros, which is what a guest page that QEMU did not dump (or a hole in a sparse file) holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol

from wincrash.inputs import open_input
from wincrash.memory.containers import open_container
from wincrash.memory.dmp import Dmp
from wincrash.memory.physical import PhysicalSource
from wincrash.memory.qemu_elf import QemuElf
from wincrash.memory.raw import Raw, Unconvertible
from wincrash.memory.savevm import QemuSavevm
from wincrash.memory.segments import MemoryMap

__all__ = ["FORMATS", "PhysicalSource", "detect_format", "open_source"]


class ContainerFormat(Protocol):
    """One input container format: detection by content, then a map of guest-physical ranges to file ranges."""

    kind: str

    @staticmethod
    def detect(head: bytes, size: int) -> bool:
        """True when the file's first 16 bytes ``head`` (and its ``size`` in bytes) are this format's."""

    @staticmethod
    def map(path: Path, fh: BinaryIO, size: int) -> MemoryMap:
        """Where the guest's memory lies in the file; WincrashError when it cannot be read."""


# Tried in order; the first whose detect() accepts the file reads it. Raw accepts anything.
FORMATS: tuple[type[ContainerFormat], ...] = (QemuElf, QemuSavevm, Dmp, Unconvertible, Raw)


def detect_format(head: bytes, size: int) -> type[ContainerFormat]:
    """The container format of a file that starts with ``head`` (16 bytes) and holds ``size`` bytes."""
    return next(fmt for fmt in FORMATS if fmt.detect(head, size))


def open_source(path: Path, scratch_dir: Path | None = None) -> PhysicalSource:
    """Open a memory image read-only and map it; the format is recognised by content.

    ``scratch_dir``: where an input whose pages are not stored plainly (kdump, compressed streams)
    is decoded into an unnamed file (memory.containers; None: the system temp folder).
    Raises WincrashError for an unreadable file, a format that cannot be converted, or a container
    whose headers the file cannot hold. The returned source owns the open file (close ``fh``).
    """
    fh, size = open_input(path)
    try:
        fmt = detect_format(os.pread(fh.fileno(), 16, 0), size)
        if fmt in (Unconvertible, Raw):
            # Containers (libvirt save, compressed streams, kdump, LiME) and files that are not memory at
            # all are recognised before anything falls back to a raw image; open_container owns fh then.
            container = open_container(path, fh, size, scratch_dir, open_source)
            if container is not None:
                return container
        mapped = fmt.map(path, fh, size)
    except BaseException:
        fh.close()
        raise
    return PhysicalSource(path, fh, mapped.kind, mapped.segments, list(mapped.cpus),  # type: ignore[arg-type]
                          mapped.machine, None if mapped.missing is None else list(mapped.missing),
                          list(mapped.notes), mapped.dump_header)
