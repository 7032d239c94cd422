"""Files engineers hand to convert that are not memory at all: disk images, ISOs, empty files.

Signatures: qcow2 'QFI\\xfb' (QEMU docs/interop/qcow2.txt), VMDK sparse extent 'KDMV' and text
descriptor '# Disk DescriptorFile' (VMware Virtual Disk Format 5.0), VHDX 'vhdxfile' (MS-VHDX 2.2.1),
VHD footer 'conectix' (at 0 in dynamic disks' copy, at the last 512 bytes of fixed ones), VDI
'<<< ' banner + 0xbeda107f at 0x40 (VirtualBox VDICore.h), GPT 'EFI PART' at LBA 1 (UEFI 2.x 5.3.2),
MBR 0x55AA at byte 510 with a plausible partition table, ISO 9660 'CD001' at 0x8001 (ECMA-119 8.1).
Pure data: the caller passes the bytes.
"""

from __future__ import annotations

import struct

HEAD_BYTES = 0x8006  # enough for the ISO 9660 volume descriptor at 0x8000
DISK_ADVICE = ("`wincrash grab-pagefile DISK` takes the crash dump Windows wrote into pagefile.sys, "
               "`wincrash prepare DISK` sets the guest up for complete dumps")


def _mbr_partitions(sector: bytes) -> int:
    """Partition entries of an MBR that look real (status 0x00/0x80, a type, a size), 0 if not an MBR."""
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return 0
    count = 0
    for i in range(4):
        entry = sector[446 + 16 * i:462 + 16 * i]
        status, ptype = entry[0], entry[4]
        (sectors,) = struct.unpack_from("<I", entry, 12)
        if status not in (0, 0x80):
            return 0
        if ptype and sectors:
            count += 1
    return count


def what_is_it(head: bytes, tail: bytes, size: int) -> tuple[str, str] | None:
    """(what the file is, which command fits) for a disk image, ISO or empty file; None otherwise.

    ``head``: the first HEAD_BYTES bytes (or fewer), ``tail``: the last 512 bytes, ``size``: bytes.
    """
    if size == 0:
        return "an empty file", "take the dump again (`wincrash dump VM` or `wincrash capture VM`)"
    if head.startswith(b"QFI\xfb"):
        return "a qcow2 disk image, not memory", DISK_ADVICE
    if head.startswith(b"KDMV") or head.startswith(b"# Disk DescriptorFile") or head.startswith(b"COWD"):
        return "a VMware VMDK disk image, not memory", DISK_ADVICE
    if head.startswith(b"vhdxfile"):
        return "a Hyper-V VHDX disk image, not memory", DISK_ADVICE
    if head.startswith(b"conectix") or tail.startswith(b"conectix"):
        return "a VHD disk image, not memory", DISK_ADVICE
    if len(head) >= 0x44 and head.startswith(b"<<< ") and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return "a VirtualBox VDI disk image, not memory", DISK_ADVICE
    if head[0x8001:0x8006] == b"CD001":
        return "an ISO 9660 CD/DVD image, not memory", "nothing to convert: give the memory dump instead"
    if head[512:520] == b"EFI PART":
        return "a raw disk image with a GPT partition table, not memory", DISK_ADVICE
    if _mbr_partitions(head[:512]):
        return "a raw disk image with an MBR partition table, not memory", DISK_ADVICE
    return None
