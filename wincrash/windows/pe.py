"""Just enough PE32+ parsing to recognise ntoskrnl in memory: sections, exports, CodeView (RSDS).

Kernel images in memory are mapped by section, so RVAs are read straight from the image base.
Layouts: the PE/COFF specification (IMAGE_DOS_HEADER.e_lfanew at 0x3C, IMAGE_OPTIONAL_HEADER64,
IMAGE_SECTION_HEADER of 40 bytes, IMAGE_DEBUG_DIRECTORY of 28 bytes, the RSDS CodeView record).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_MEM_WRITE = 0x80000000
KERNEL_PDB_NAMES = (b"ntkrnlmp.pdb", b"ntoskrnl.pdb", b"ntkrnlpa.pdb", b"ntkrpamp.pdb")
HYPERVISOR_PDB_NAMES = (b"hvix64.pdb", b"hvax64.pdb", b"hvaa64.pdb")  # Intel, AMD, ARM64 Hyper-V
SECURE_KERNEL_PDB_NAMES = (b"securekernel.pdb", b"securekernella57.pdb")


@dataclass(frozen=True)
class Section:
    """One IMAGE_SECTION_HEADER: ``rva`` and ``size`` (VirtualSize) in bytes from the image base."""

    name: str
    rva: int
    size: int
    characteristics: int

    @property
    def writable_data(self) -> bool:
        """Writable and not executable (.data and friends: where the KDBG and KdVersionBlock live)."""
        return bool(self.characteristics & IMAGE_SCN_MEM_WRITE) and not self.characteristics & IMAGE_SCN_MEM_EXECUTE


@dataclass(frozen=True)
class PeImage:
    """A PE32+ image mapped at virtual ``base`` (bytes: ``size_of_image``), with its CodeView PDB identity.

    ``pdb_guid`` is the RSDS GUID as 32 upper-case hex digits (how symbol servers name it);
    ``exports`` maps export names to RVAs (empty when not asked for or not readable).
    """

    base: int
    size_of_image: int
    sections: tuple[Section, ...] = ()
    pdb_name: str | None = None
    pdb_guid: str | None = None
    pdb_age: int | None = None
    exports: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # name -> RVA

    def contains(self, va: int) -> bool:
        """True when virtual address ``va`` lies inside the image."""
        return self.base <= va < self.base + self.size_of_image


def parse_pe(read: Callable[[int, int], bytes | None], base: int, want_exports: bool = True) -> PeImage | None:
    """Parse the PE image mapped at ``base`` through ``read(va, size)``; None when there is no valid PE32+
    header there (bad magic, e_lfanew outside 0x40-0x800, SizeOfImage outside 4 KiB-256 MiB)."""
    dos = read(base, 0x40)
    if not dos or dos[:2] != b"MZ":
        return None
    e_lfanew = struct.unpack_from("<I", dos, 0x3C)[0]
    if not 0x40 <= e_lfanew <= 0x800:
        return None
    nt = read(base + e_lfanew, 0x108)
    if not nt or nt[:4] != b"PE\0\0":
        return None
    nsections, opt_size = struct.unpack_from("<H", nt, 6)[0], struct.unpack_from("<H", nt, 20)[0]
    opt = 24
    if struct.unpack_from("<H", nt, opt)[0] != 0x20B:  # PE32+ magic
        return None
    size_of_image = struct.unpack_from("<I", nt, opt + 56)[0]
    if not 0x1000 <= size_of_image <= 0x1000_0000:
        return None
    table = read(base + e_lfanew + 24 + opt_size, 40 * min(nsections, 96)) or b""
    sections = []
    for i in range(len(table) // 40):
        raw = table[i * 40:(i + 1) * 40]
        vsize, rva = struct.unpack_from("<II", raw, 8)
        sections.append(Section(raw[:8].rstrip(b"\0").decode("latin-1"), rva, vsize,
                                struct.unpack_from("<I", raw, 36)[0]))
    export_rva, export_size = struct.unpack_from("<II", nt, opt + 112)
    debug_rva, debug_size = struct.unpack_from("<II", nt, opt + 112 + 6 * 8)
    pdb_name, pdb_guid, pdb_age = _read_codeview(read, base, debug_rva, debug_size)
    exports = _read_exports(read, base, export_rva, export_size) if want_exports and export_rva and export_size \
        else {}
    return PeImage(base, size_of_image, tuple(sections), pdb_name, pdb_guid, pdb_age, MappingProxyType(exports))


def _read_codeview(read: Callable[[int, int], bytes | None], base: int, rva: int,
                   size: int) -> tuple[str | None, str | None, int | None]:
    """(PDB name, GUID, age) from the first RSDS record of the debug directory; Nones when there is none."""
    if not rva or not 28 <= size <= 28 * 16:
        return None, None, None
    entries = read(base + rva, size)
    if not entries:
        return None, None, None
    for i in range(size // 28):
        dtype, dsize, drva = struct.unpack_from("<III", entries, i * 28 + 12)  # Type, SizeOfData, AddressOfRawData
        if dtype != 2 or not 24 < dsize < 1024 or not drva:
            continue
        cv = read(base + drva, dsize)
        if cv and cv[:4] == b"RSDS":
            return (cv[24:].split(b"\0", 1)[0].decode("latin-1"),
                    str(uuid.UUID(bytes_le=cv[4:20])).replace("-", "").upper(), struct.unpack_from("<I", cv, 20)[0])
    return None, None, None


def _read_exports(read: Callable[[int, int], bytes | None], base: int, rva: int, size: int) -> dict[str, int]:
    """Export name -> RVA from IMAGE_EXPORT_DIRECTORY; empty when its tables are not readable."""
    exports: dict[str, int] = {}
    directory = read(base + rva, 40)
    if not directory:
        return exports
    nfuncs, nnames, funcs_rva, names_rva, ords_rva = struct.unpack_from("<IIIII", directory, 20)
    if nnames > 8192 or nfuncs > 8192:
        return exports
    names = read(base + names_rva, 4 * nnames)
    ords = read(base + ords_rva, 2 * nnames)
    funcs = read(base + funcs_rva, 4 * nfuncs)
    if not names or not ords or not funcs:
        return exports
    for i in range(nnames):
        name_rva = struct.unpack_from("<I", names, 4 * i)[0]
        raw = read(base + name_rva, 64)
        if not raw:
            continue
        ordinal = struct.unpack_from("<H", ords, 2 * i)[0]
        if ordinal < nfuncs:
            exports[raw.split(b"\0", 1)[0].decode("latin-1")] = struct.unpack_from("<I", funcs, 4 * ordinal)[0]
    return exports


def is_kernel_pdb(name: str | None) -> bool:
    """ntoskrnl's PDB names (case-insensitive), for every x64 kernel flavour."""
    return bool(name) and name.lower().encode() in KERNEL_PDB_NAMES


def is_hypervisor_pdb(name: str | None) -> bool:
    """Hyper-V's hvix64/hvax64/hvaa64 PDB names."""
    return bool(name) and name.lower().encode() in HYPERVISOR_PDB_NAMES


def is_secure_kernel_pdb(name: str | None) -> bool:
    """The VBS secure kernel's (VTL1) PDB names."""
    return bool(name) and name.lower().encode() in SECURE_KERNEL_PDB_NAMES
