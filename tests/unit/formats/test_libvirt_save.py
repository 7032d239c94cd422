"""The libvirt save header layout: 92 bytes as libvirt 9.0 writes it, the 96-byte hand-made form tolerated."""

from __future__ import annotations

import struct

from wincrash.formats.libvirt_save import HEADER_SIZE, PADDED_HEADER_SIZE, SaveHeader, domain_facts, header_length


def test_header_is_libvirts_92_bytes() -> None:
    # virQEMUSaveHeader (libvirt src/qemu/qemu_saveimage.h): magic[16] + 5 uint32 + unused[14]
    raw = struct.pack("<16s5I14I", b"LibvirtQemudSave", 2, 4096, 1, 3, 77, *[0] * 14)
    assert len(raw) == HEADER_SIZE == 92
    h = SaveHeader.parse(raw)
    assert (h.version, h.data_len, h.was_running, h.compressed, h.cookie_offset) == (2, 4096, 1, 3, 77)


def test_header_length_finds_the_stream() -> None:
    zeros = bytes(8)
    assert header_length(b"QEVM\0\0\0\3", b"\0\0\0\3xxxx") == HEADER_SIZE
    assert header_length(b"\x1f\x8b\x08\0\0\0\0\0", zeros) == HEADER_SIZE  # gzip right after libvirt's header
    assert header_length(zeros, b"QEVM\0\0\0\3") == PADDED_HEADER_SIZE  # a hand-made 96-byte header
    assert header_length(zeros, b"(\xb5/\xfd\0\0\0\0") == PADDED_HEADER_SIZE
    assert header_length(zeros, zeros) == HEADER_SIZE  # nothing recognised: libvirt's layout, callers report


def test_domain_facts_of_libvirt_xml() -> None:
    xml = (b"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>vm</name>"
           b"<uuid>cfbc8b33-fd68-4d28-948e-66a7d8d353d7</uuid><memory unit='KiB'>262144</memory>"
           b"<vcpu placement='static'>2</vcpu></domain>\0\0<cookie/>")
    f = domain_facts(xml)
    assert (f.name, f.uuid, f.memory_bytes, f.vcpus) == ("vm", "cfbc8b33-fd68-4d28-948e-66a7d8d353d7", 256 << 20, 2)
