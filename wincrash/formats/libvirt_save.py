"""libvirt's QEMU save image: what `virsh save`, `virsh managedsave` and external snapshots' memory files hold.

Layout (libvirt src/qemu/qemu_saveimage.h, virQEMUSaveHeader, version 2; host byte order): magic
'LibvirtQemudSave' ('LibvirtQemudPart' while the save is still being written, so a file that still says
Part is an interrupted save), version, data_len (bytes of domain XML + cookie that follow the 92-byte
header, NUL padded), was_running, compressed (QEMU_SAVE_FORMAT_*), cookieOffset, 14 unused words.
The QEMU migration stream ('QEVM', or its compressed form) starts at 92 + data_len: checked on the
files libvirt 9.0 writes (`virsh save`, `virsh managedsave`). Images made by hand with a 96-byte header
(15 unused words; the handed sample cases/libvirt-save-header) are read too, see header_length().
Pure data: no I/O.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from construct import Array, Bytes, Int32ul, Struct

from wincrash.formats.compression import compression_of

SAVE_MAGIC = b"LibvirtQemudSave"
PARTIAL_MAGIC = b"LibvirtQemudPart"
HEADER_SIZE = 92
PADDED_HEADER_SIZE = 96  # hand-made images with unused[15]; libvirt itself never wrote this
# QEMU_SAVE_FORMAT_* (libvirt qemu_saveimage.h; zstd since libvirt 8.x)
COMPRESSION = {0: "raw", 1: "gzip", 2: "bzip2", 3: "xz", 4: "lzop", 5: "zstd"}

SaveHeader = Struct(
    "magic" / Bytes(16),
    "version" / Int32ul,
    "data_len" / Int32ul,
    "was_running" / Int32ul,
    "compressed" / Int32ul,
    "cookie_offset" / Int32ul,
    "unused" / Array(14, Int32ul),
)
assert SaveHeader.sizeof() == HEADER_SIZE


def header_length(at_header: bytes, at_padded: bytes) -> int:
    """Bytes before the domain XML: HEADER_SIZE (92, libvirt's layout), or PADDED_HEADER_SIZE (96) when the
    stream is not where libvirt puts it but a 96-byte header would put it there.

    ``at_header`` / ``at_padded``: the first 8 bytes at HEADER_SIZE + data_len and PADDED_HEADER_SIZE +
    data_len. A stream is recognised by 'QEVM' or a compressor's magic (formats.compression).
    """
    if not _starts_stream(at_header) and _starts_stream(at_padded):
        return PADDED_HEADER_SIZE
    return HEADER_SIZE


def _starts_stream(data: bytes) -> bool:
    return data.startswith(b"QEVM") or compression_of(data) is not None


def is_libvirt_save(magic: bytes) -> bool:
    """True when ``magic`` (the first 16 bytes) starts a libvirt save image, complete or not."""
    return magic[:16] in (SAVE_MAGIC, PARTIAL_MAGIC)


@dataclass(frozen=True)
class DomainFacts:
    """What the domain XML says: name, UUID, RAM in bytes, vCPU count (None when absent)."""

    name: str | None
    uuid: str | None
    memory_bytes: int | None
    vcpus: int | None


UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
         "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40, "tb": 10**12}


def domain_facts(xml: bytes) -> DomainFacts:
    """Parse the domain XML libvirt stored (``xml``: the bytes up to the first NUL); tolerant of junk."""
    try:
        root = ET.fromstring(xml.split(b"\0", 1)[0].decode("utf-8", "replace"))
    except ET.ParseError:
        return DomainFacts(None, None, None, None)
    if root.tag != "domain":
        found = root.find(".//domain")
        root = found if found is not None else root
    memory = root.find("memory")
    size = None
    if memory is not None and (memory.text or "").strip().isdigit():
        size = int(memory.text.strip()) * UNITS.get(memory.get("unit", "KiB").lower(), 1024)  # type: ignore[union-attr]
    vcpu = root.find("vcpu")
    vcpus = int(vcpu.text.strip()) if vcpu is not None and (vcpu.text or "").strip().isdigit() else None  # type: ignore[union-attr]
    return DomainFacts(root.findtext("name"), root.findtext("uuid"), size, vcpus)
