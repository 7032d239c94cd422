"""Minimal but well-formed PE32+ images (headers, section table, export directory, CodeView RSDS record).

A converter finds ntoskrnl by its 'MZ'/'PE' headers and the CodeView record naming ntkrnlmp.pdb, and reads
NtBuildNumber & co. through the export directory: these are built exactly as the Microsoft linker lays
them out. Image contents other than what we place are left out (zero), as pages of a real image may be.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

IMAGE_FILE_MACHINE_AMD64 = 0x8664
IMAGE_DEBUG_TYPE_CODEVIEW = 2
SCN_CODE = 0x00000020
SCN_IDATA = 0x00000040
SCN_DISCARDABLE = 0x02000000
SCN_NOT_PAGED = 0x08000000
SCN_EXECUTE = 0x20000000
SCN_READ = 0x40000000
SCN_WRITE = 0x80000000
TEXT = SCN_CODE | SCN_EXECUTE | SCN_READ | SCN_NOT_PAGED
PAGECODE = SCN_CODE | SCN_EXECUTE | SCN_READ
RDATA = SCN_IDATA | SCN_READ | SCN_NOT_PAGED
DATA = SCN_IDATA | SCN_READ | SCN_WRITE | SCN_NOT_PAGED
INIT = SCN_CODE | SCN_EXECUTE | SCN_READ | SCN_DISCARDABLE
RELOC = SCN_IDATA | SCN_READ | SCN_DISCARDABLE

E_LFANEW = 0x108
DOS_STUB = (b"\x0e\x1f\xba\x0e\x00\xb4\x09\xcd\x21\xb8\x01\x4c\xcd\x21"
            b"This program cannot be run in DOS mode.\r\r\n$\x00\x00\x00\x00\x00\x00\x00")


@dataclass(frozen=True)
class Section:
    name: str
    rva: int
    vsize: int
    characteristics: int


def guid_bytes(guid_hex: str) -> bytes:
    """A PDB GUID as printed ("5278AFF86C34...") in its in-file byte order (Data1..3 little-endian)."""
    raw = bytes.fromhex(guid_hex)
    d1, d2, d3 = struct.unpack(">IHH", raw[:8])
    return struct.pack("<IHH", d1, d2, d3) + raw[8:]


def codeview_record(pdb_name: str, guid_hex: str, age: int) -> bytes:
    return b"RSDS" + guid_bytes(guid_hex) + struct.pack("<I", age) + pdb_name.encode() + b"\x00"


def debug_directory(rsds_rva: int, rsds_len: int, timestamp: int) -> bytes:
    """One IMAGE_DEBUG_DIRECTORY entry (28 bytes) pointing at a CodeView record."""
    return struct.pack("<IIHHIIII", 0, timestamp, 0, 0, IMAGE_DEBUG_TYPE_CODEVIEW, rsds_len, rsds_rva, 0)


def export_directory(rva: int, dll_name: str, exports: dict[str, int], timestamp: int) -> bytes:
    """IMAGE_EXPORT_DIRECTORY plus its tables and strings, to be placed at ``rva``."""
    names = sorted(exports)
    n = len(names)
    funcs_rva = rva + 40
    names_rva = funcs_rva + 4 * n
    ords_rva = names_rva + 4 * n
    strings_rva = ords_rva + 2 * n
    strings = bytearray(dll_name.encode() + b"\x00")
    name_ptrs = []
    for name in names:
        name_ptrs.append(strings_rva + len(strings))
        strings += name.encode() + b"\x00"
    out = struct.pack("<IIHHIIIIIII", 0, timestamp, 0, 0, strings_rva, 1, n, n, funcs_rva, names_rva, ords_rva)
    out += struct.pack(f"<{n}I", *(exports[name] for name in names))
    out += struct.pack(f"<{n}I", *name_ptrs)
    out += struct.pack(f"<{n}H", *range(n))
    return out + bytes(strings)


def pe_headers(*, image_base: int, size_of_image: int, sections: list[Section], entry_rva: int, timestamp: int,
               os_version: tuple[int, int], export_dir: tuple[int, int] = (0, 0),
               debug_dir: tuple[int, int] = (0, 0), dll: bool = False) -> bytes:
    """The first page of an image: DOS header and stub, NT headers, section table."""
    dos = bytearray(E_LFANEW)
    struct.pack_into("<2sHHHHHHHHHHHHH", dos, 0, b"MZ", 0x90, 3, 0, 4, 0, 0xFFFF, 0, 0xB8, 0, 0, 0, 0x40, 0)
    struct.pack_into("<I", dos, 0x3C, E_LFANEW)
    dos[0x40:0x40 + len(DOS_STUB)] = DOS_STUB
    characteristics = 0x0022 | (0x2000 if dll else 0)  # EXECUTABLE_IMAGE | LARGE_ADDRESS_AWARE (| DLL)
    file_header = struct.pack("<HHIIIHH", IMAGE_FILE_MACHINE_AMD64, len(sections), timestamp, 0, 0, 0xF0,
                              characteristics)
    code = sum(s.vsize for s in sections if s.characteristics & SCN_CODE)
    idata = sum(s.vsize for s in sections if s.characteristics & SCN_IDATA)
    dirs = [(0, 0)] * 16
    dirs[0] = export_dir
    dirs[6] = debug_dir
    optional = struct.pack("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", 0x20B, 14, 20, code, idata, 0, entry_rva, 0x1000,
                           image_base, 0x1000, 0x200, os_version[0], os_version[1], os_version[0], os_version[1],
                           os_version[0], os_version[1], 0, size_of_image, 0x600, 0, 1, 0x4160, 0x80000, 0x2000,
                           0x100000, 0x1000, 0, 16)
    optional += b"".join(struct.pack("<II", r, s) for r, s in dirs)
    assert len(optional) == 0xF0
    table = b"".join(
        struct.pack("<8sIIIIIIHHI", s.name.encode()[:8], s.vsize, s.rva, -(-s.vsize // 0x200) * 0x200, 0, 0, 0,
                    0, 0, s.characteristics)
        for s in sections
    )
    page = bytes(dos) + b"PE\x00\x00" + file_header + optional + table
    if len(page) > 0x1000:
        raise ValueError("too many sections for one header page")
    return page + bytes(0x1000 - len(page))
