"""Reading a kdump file through makedumpfile's flattened form without reassembling it on disk.

The flattened stream is a list of records "these bytes belong at this offset of the 'KDUMP   ' file"
(wincrash.formats.kdump). An index of the records (three arrays, 24 bytes a record) lets the kdump
reader ask for any byte range of the virtual 'KDUMP   ' file; `makedumpfile -R` would instead write
the whole file again first.
"""

from __future__ import annotations

import bisect
import os
import struct
from array import array

from wincrash.errors import WincrashError
from wincrash.formats.kdump import FLAT_END, FLAT_HEADER_SIZE, FLAT_RECORD_HEADER_SIZE

SCAN_CHUNK = 8 << 20


class PlainReader:
    """The 'KDUMP   ' file itself: reads are preads. ``size`` is the file's length in bytes."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` of the kdump file (short at its end)."""
        return os.pread(self.fd, length, offset)


class FlatReader:
    """The 'KDUMP   ' file a flattened stream describes, read through an index of its records.

    ``truncated`` is True when the stream stops before its end marker (an interrupted dump); reads of
    bytes no record holds come back short (at the first missing byte).
    """

    def __init__(self, fd: int, file_size: int) -> None:
        self.fd = fd
        self.virt = array("Q")  # offset in the kdump file, sorted after building
        self.length = array("Q")
        self.where = array("Q")  # offset of the record's data in the flattened file
        self.truncated = True
        self._scan(file_size)
        order = sorted(range(len(self.virt)), key=self.virt.__getitem__)
        if any(order[i] != i for i in range(len(order))):
            self.virt, self.length, self.where = (array("Q", (a[i] for i in order))
                                                  for a in (self.virt, self.length, self.where))
        self.size = max((v + n for v, n in zip(self.virt, self.length, strict=True)), default=0)

    def _scan(self, file_size: int) -> None:
        pos = FLAT_HEADER_SIZE
        buf, buf_at = b"", pos
        while pos + FLAT_RECORD_HEADER_SIZE <= file_size:
            if pos + FLAT_RECORD_HEADER_SIZE > buf_at + len(buf):
                buf, buf_at = os.pread(self.fd, SCAN_CHUNK, pos), pos
            offset, size = struct.unpack_from(">qq", buf, pos - buf_at)
            if offset == FLAT_END and size == FLAT_END:
                self.truncated = False
                return
            if offset < 0 or size < 0 or size > 1 << 40:
                raise WincrashError(f"flattened kdump: malformed record at file offset {pos} (offset {offset}, "
                                    f"size {size})")
            data_at = pos + FLAT_RECORD_HEADER_SIZE
            present = min(size, file_size - data_at)
            if present > 0:
                self.virt.append(offset)
                self.length.append(present)
                self.where.append(data_at)
            pos = data_at + size

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` of the kdump file; short at the first byte no record holds."""
        out = bytearray()
        i = bisect.bisect_right(self.virt, offset) - 1
        while length > 0 and 0 <= i < len(self.virt):
            start, n = self.virt[i], self.length[i]
            if not start <= offset < start + n:
                break
            take = min(length, start + n - offset)
            out += os.pread(self.fd, take, self.where[i] + offset - start)
            offset += take
            length -= take
            i += 1
        return bytes(out)
