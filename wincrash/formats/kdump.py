"""kdump-compressed dumps ('KDUMP   ', makedumpfile's diskdump format) and makedumpfile's flattened form.

Layout (makedumpfile diskdump_mod.h; QEMU 7.2 include/sysemu/dump.h, which writes the same for
`dump-guest-memory format=kdump-*`), all in blocks of ``block_size`` bytes (the page size):

- block 0: disk_dump_header (signature 'KDUMP   ', header_version, utsname, timestamp, status, ...).
- block 1: kdump_sub_header (phys_base, ..., offset_note/size_note: an ELF note area; QEMU puts the
  'CORE' NT_PRSTATUS and 'QEMU' QEMUCPUState notes of every vCPU there, as in its ELF dumps).
- blocks 1+sub_hdr_size ..: two bitmaps of bitmap_blocks/2 blocks each: bit N of the first says pfn N
  is RAM, bit N of the second that it is dumped (little-endian bit order).
- then one page_desc (24 bytes) per set bit of the second bitmap, in pfn order: file offset, stored
  size, flags (compression), page flags. QEMU stores every all-zero page once and points all zero
  pages' descriptors at that one copy.

The flattened form (makedumpfile -F, and QEMU < 8.2 always for kdump-*): a 4096-byte header starting
with 'makedumpfile' (type and version as big-endian int64), then records of big-endian (offset, size)
followed by ``size`` bytes that belong at ``offset`` of the 'KDUMP   ' file; (-1, -1) ends the stream.
`makedumpfile -R OUT < FLAT` reassembles it. Pure data: no I/O.
"""

from __future__ import annotations

from construct import Bytes, Int32ul, Int64sb, Int64ul, Padding, Struct

KDUMP_SIGNATURE = b"KDUMP   "
FLAT_SIGNATURE = b"makedumpfile"
FLAT_HEADER_SIZE = 4096  # MAX_SIZE_MDF_HEADER
FLAT_END = -1  # END_FLAG_FLAT_HEADER: offset and size of the last record

# page_desc.flags (QEMU dump.h DUMP_DH_COMPRESSED_*; makedumpfile adds ZSTD 0x20)
COMPRESSED_ZLIB = 0x1
COMPRESSED_LZO = 0x2
COMPRESSED_SNAPPY = 0x4
COMPRESSED_ZSTD = 0x20
COMPRESSION_NAMES = {COMPRESSED_ZLIB: "zlib", COMPRESSED_LZO: "lzo", COMPRESSED_SNAPPY: "snappy",
                     COMPRESSED_ZSTD: "zstd"}

NEW_UTS_LEN = 65

DiskDumpHeader64 = Struct(
    "signature" / Bytes(8),
    "header_version" / Int32ul,
    "utsname" / Bytes(6 * NEW_UTS_LEN),  # sysname, nodename, release, version, machine, domainname
    Padding(6),  # to 8-byte alignment of the timeval
    "tv_sec" / Int64ul,
    "tv_usec" / Int64ul,
    "status" / Int32ul,
    "block_size" / Int32ul,
    "sub_hdr_size" / Int32ul,  # blocks
    "bitmap_blocks" / Int32ul,  # blocks, both bitmaps together
    "max_mapnr" / Int32ul,  # obsolete: max_mapnr_64 in the sub-header (header_version >= 6)
    "total_ram_blocks" / Int32ul,
    "device_blocks" / Int32ul,
    "written_blocks" / Int32ul,
    "current_cpu" / Int32ul,
    "nr_cpus" / Int32ul,
)
DISK_DUMP_HEADER_SIZE = DiskDumpHeader64.sizeof()  # 464

KdumpSubHeader64 = Struct(
    "phys_base" / Int64ul,
    "dump_level" / Int32ul,
    "split" / Int32ul,
    "start_pfn" / Int64ul,
    "end_pfn" / Int64ul,
    "offset_vmcoreinfo" / Int64ul,
    "size_vmcoreinfo" / Int64ul,
    "offset_note" / Int64ul,  # header_version >= 4
    "size_note" / Int64ul,
    "offset_eraseinfo" / Int64ul,
    "size_eraseinfo" / Int64ul,
    "start_pfn_64" / Int64ul,  # header_version >= 6
    "end_pfn_64" / Int64ul,
    "max_mapnr_64" / Int64ul,
)
KDUMP_SUB_HEADER_SIZE = KdumpSubHeader64.sizeof()  # 112

PAGE_DESC_FORMAT = "<QIIQ"  # offset, size, flags, page_flags
PAGE_DESC_SIZE = 24

FlatHeader = Struct("signature" / Bytes(16), "type" / Int64sb, "version" / Int64sb)
FlatRecordHeader = Struct("offset" / Int64sb, "size" / Int64sb)
FLAT_RECORD_HEADER_SIZE = 16


def utsname_fields(raw: bytes) -> dict[str, str]:
    """The six NUL-terminated utsname strings (QEMU fills only machine, e.g. "x86_64")."""
    names = ("sysname", "nodename", "release", "version", "machine", "domainname")
    return {n: raw[i * NEW_UTS_LEN:(i + 1) * NEW_UTS_LEN].split(b"\0")[0].decode("ascii", "replace")
            for i, n in enumerate(names)}
