"""`info` for memory containers convert reads: libvirt save images, compressed streams, kdump, LiME.

Headers only (a compressed stream: its first decompressed bytes, to say what is inside); files that
are not memory (disk images, ISOs) are named with the command that fits.
"""

from __future__ import annotations

import bz2
import lzma
import os
import zlib
from typing import BinaryIO

from wincrash.describe.report import Report
from wincrash.errors import WincrashError
from wincrash.formats.compression import UNDO, compression_of
from wincrash.formats.kdump import COMPRESSION_NAMES, utsname_fields
from wincrash.formats.libvirt_save import (
    COMPRESSION,
    HEADER_SIZE,
    PADDED_HEADER_SIZE,
    PARTIAL_MAGIC,
    SaveHeader,
    domain_facts,
    header_length,
    is_libvirt_save,
)
from wincrash.formats.not_memory import HEAD_BYTES, what_is_it
from wincrash.memory.qemu_elf import cpu_summary

PEEK = 64 << 10


def describe_container(fh: BinaryIO, path: str, size: int) -> Report | None:
    """A Report for a container input convert reads, None for anything else; WincrashError for non-memory."""
    head = os.pread(fh.fileno(), HEAD_BYTES, 0)
    from wincrash.memory.kdump import is_kdump

    if is_kdump(head[:16]):
        return _describe_kdump(fh, path, size)
    if is_libvirt_save(head[:16]):
        return _describe_libvirt_save(fh, path, size, head)
    compression = compression_of(head)
    if compression:
        inner = _peek(compression, head[:PEEK])
        report = Report(path=path, size=size, kind=f"{compression}-compressed",
                        title=f"{compression}-compressed {_inner_name(inner)}")
        report.notes.append(f"convert decompresses it next to the output (or by hand: `{UNDO[compression]} {path} "
                            "> memory.raw`)")
        report.unchecked = f"the {compression} stream (only its first bytes were read)"
        return report
    if head[:4] == b"EMiL":
        return Report(path=path, size=size, kind="lime", title="LiME physical memory image (convert reads it)",
                      unchecked="the LiME ranges and their memory (only the first header was read)")
    tail = os.pread(fh.fileno(), 512, max(0, size - 512)) if size >= 1024 else b""
    named = what_is_it(head, tail, size)
    if named:
        raise WincrashError(f"{path}: {named[0]}: {named[1]}")
    return None


def _peek(compression: str, data: bytes) -> bytes:
    """The first decompressed bytes (stdlib compressors only; b'' when unknown)."""
    try:
        if compression == "gzip":
            return zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(data, 64)
        if compression == "bzip2":
            return bz2.BZ2Decompressor().decompress(data, 64)
        if compression == "xz":
            return lzma.LZMADecompressor().decompress(data, 64)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        return b""
    return b""


def _inner_name(inner: bytes) -> str:
    if inner.startswith(b"QEVM"):
        return "QEMU migration stream (virsh dump/save with dump_image_format or save_image_format)"
    if inner.startswith(b"\x7fELF"):
        return "ELF core (dump-guest-memory)"
    if inner.startswith(b"KDUMP   ") or inner.startswith(b"makedumpfile"):
        return "kdump file"
    return "file"


def _describe_libvirt_save(fh: BinaryIO, path: str, size: int, head: bytes) -> Report:
    header = SaveHeader.parse(head[:HEADER_SIZE].ljust(HEADER_SIZE, b"\0"))
    xml_at = header_length(os.pread(fh.fileno(), 8, HEADER_SIZE + header.data_len),
                           os.pread(fh.fileno(), 8, PADDED_HEADER_SIZE + header.data_len))
    xml = os.pread(fh.fileno(), min(header.data_len, 1 << 20), xml_at)
    dom = domain_facts(xml)
    compression = COMPRESSION.get(header.compressed, f"unknown ({header.compressed})")
    report = Report(path=path, size=size, kind="libvirt-save",
                    title=f"libvirt save image (virsh save/managedsave) of domain {dom.name or '?'}"
                          + ("" if compression == "raw" else f", {compression}-compressed"))
    report.sections["libvirt"] = {
        "version": header.version, "xml_bytes": header.data_len, "was_running": bool(header.was_running),
        "compression": compression, "complete": header.magic != PARTIAL_MAGIC,
        "stream_offset": xml_at + header.data_len,
    }
    report.sections["domain"] = {"name": dom.name, "uuid": dom.uuid, "memory_bytes": dom.memory_bytes,
                                 "vcpus": dom.vcpus}
    if header.magic == PARTIAL_MAGIC:
        report.problems.append("libvirt had not finished writing it ('LibvirtQemudPart'): the save was interrupted")
    if HEADER_SIZE + header.data_len >= size:
        report.problems.append("truncated: no memory stream after the domain XML")
    report.notes.append("`wincrash convert` converts the QEMU migration stream inside")
    report.unchecked = "the QEMU migration stream inside (only the libvirt header and domain XML were read)"
    return report


def _describe_kdump(fh: BinaryIO, path: str, size: int) -> Report:
    from wincrash.memory.kdump import read_layout

    layout, _reader = read_layout(fh, size)
    h, sub = layout.header, layout.sub
    report = Report(path=path, size=size, kind="kdump" if layout.form == "plain" else "kdump-flattened",
                    title=("kdump-compressed memory dump" if layout.form == "plain" else
                           "kdump-compressed memory dump in makedumpfile's flattened form (QEMU < 8.2 "
                           "dump-guest-memory format=kdump-*)"))
    report.sections["kdump"] = {
        "header_version": h.header_version, "block_size": h.block_size,
        "compression": [n for bit, n in COMPRESSION_NAMES.items() if h.status & bit] or ["none"],
        "machine": utsname_fields(h.utsname)["machine"], "nr_cpus": h.nr_cpus,
        "dumped_pages": layout.pages, "max_pfn": sub.max_mapnr_64 or h.max_mapnr,
        "runs": [{"start": f"0x{p * 0x1000:x}", "pages": n} for p, n in layout.runs],
    }
    report.sections["cpus"] = [cpu_summary(i, cpu) for i, cpu in enumerate(layout.cpus)]
    if layout.truncated:
        report.problems.append("truncated: the flattened stream ends before its end marker")
    report.notes.append("`wincrash convert` decompresses its pages next to the output")
    report.unchecked = "the compressed pages (only headers, bitmaps and notes were read)"
    return report
