"""Write a DMP straight from QEMU's dump stream: each page goes to its final offset as it arrives.

The DMP's page layout depends only on Windows' memory runs (full: header, then the runs' pages in run
order; complete bitmap: header, summary, bitmap, then the runs' pages in frame order), so once the runs
are known (found through the monitor before the dump: convert/stream.py) every streamed page
has a place. Zero pages are left as holes. Pages outside the runs, which the analysis may still read
(and which a DMP does not hold), are kept after the DMP's end and cut off when it is finished.

When the stream has ended, Windows is found again in exactly the bytes convert would have read (the
DMP's pages plus those kept, with the stream's vCPU notes), and the plan's header and patches are
written by dmp/writer.py itself over a source that holds only the patched pages: the result is what
convert makes of the same ELF. When that plan's runs differ from the layout (guessed wrong), the DMP
is rewritten from those bytes by write_dump (one more copy; never happens when the runs are stable).

A kernel dump ('SDMP') keeps only the pages the kernel's page tables reach, which are known only once
memory is there: its stream is staged as a complete bitmap layout in a scratch file (zero pages holes),
and finish_kernel cuts the kernel dump from those bytes, found and planned exactly as convert would
from the ELF, so the result equals `dump` + `convert --format kernel` of the same moment.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from wincrash.dmp.pagecopy import nonzero_spans, start_writeback
from wincrash.dmp.plan import DumpPlan, plan_dump
from wincrash.dmp.writer import WriteResult, bitmap_layout, patch_pages, write_dump
from wincrash.errors import WincrashError
from wincrash.formats.dump import DUMP_HEADER64_SIZE, PAGE_SIZE
from wincrash.memory.elf_stream import ElfStream
from wincrash.memory.qemu_elf import Segment
from wincrash.memory.source import PhysicalSource
from wincrash.windows.facts import WindowsFacts
from wincrash.windows.locate import locate_windows

# A complete bitmap DMP ('FDMP', dmp/bitmap_writer.py) marks every page of the runs present, so its layout is
# known before the pages arrive; a kernel dump ('SDMP') needs the page tables first: its stream is staged in
# the complete bitmap layout (a scratch file) and cut afterwards (finish_kernel).
STREAM_FORMATS = ("full", "bitmap", "kernel")


@dataclass(frozen=True)
class StreamLayout:
    """Where each page of ``runs`` ((first page, count), in the DMP's order) goes: ``data_offset`` (bytes)
    plus its index in that order times 4 KiB; ``end`` is the file size in bytes."""

    fmt: str
    runs: tuple[tuple[int, int], ...]
    data_offset: int
    end: int

    def __post_init__(self) -> None:
        index, total = [], 0
        for base, count in self.runs:
            index.append((base, count, total))  # (first page, pages, index of its first page in the DMP)
            total += count
        object.__setattr__(self, "_index", sorted(index))

    def place(self, pfn: int) -> tuple[int, int] | None:
        """(file offset of page ``pfn``, pages that follow it contiguously in its run), or None outside the runs."""
        index: list[tuple[int, int, int]] = self._index  # type: ignore[attr-defined]
        i = bisect.bisect_right(index, (pfn, 1 << 62, 0)) - 1
        if i < 0:
            return None
        base, count, first = index[i]
        if pfn >= base + count:
            return None
        return self.data_offset + (first + pfn - base) * PAGE_SIZE, base + count - pfn

    def next_run(self, pfn: int) -> int | None:
        """The first page of the next run above ``pfn`` (for a page outside the runs), or None."""
        index: list[tuple[int, int, int]] = self._index  # type: ignore[attr-defined]
        i = bisect.bisect_right(index, (pfn, 1 << 62, 0))
        return index[i][0] if i < len(index) else None


def stream_layout(runs: Sequence[tuple[int, int]], fmt: str) -> StreamLayout:
    """The layout of a ``fmt`` DMP of ``runs`` (the plan's header runs); "kernel" stages the stream in the
    complete bitmap layout. ValueError for another format."""
    pages = sum(c for _, c in runs)
    if fmt == "full":
        return StreamLayout(fmt, tuple(runs), DUMP_HEADER64_SIZE, DUMP_HEADER64_SIZE + pages * PAGE_SIZE)
    if fmt in ("bitmap", "kernel"):
        first = bitmap_layout(list(runs), 0)[1]
        return StreamLayout("bitmap", tuple(sorted(runs)), first, first + pages * PAGE_SIZE)
    raise ValueError(f"a {fmt!r} dump cannot be streamed: use {' or '.join(STREAM_FORMATS)}")


class DmpStreamSink:
    """The dump stream's consumer: ``write(bytes)`` (from the pipe-reading thread) places pages in ``out``.

    ``tee`` (the --keep-elf file) gets every byte as received. ``received`` counts stream bytes.
    ``writeback``: start writing placed pages to disk at once (an output); False for a scratch file
    that is read back and dropped (the kernel format's staging), which need not reach the disk.
    OSError (a full disk) propagates to the caller of write().
    """

    def __init__(self, out: BinaryIO, layout: StreamLayout, tee: BinaryIO | None = None,
                 writeback: bool = True) -> None:
        self.out, self.layout, self.tee, self.writeback = out, layout, tee, writeback
        self.fd = out.fileno()
        self.elf = ElfStream()
        self.received = 0
        self.kept_at = layout.end  # next free byte of the area after the DMP (pages outside the runs)
        self.segments: list[Segment] = []

    def write(self, data: bytes) -> int:
        """Consume the next bytes of the stream; returns len(data)."""
        if self.tee is not None:
            self.tee.write(data)
        for pa, pages in self.elf.feed(data):
            self._place(pa, pages)
        self.received += len(data)
        return len(data)

    def _add_segment(self, pa: int, n: int, offset: int) -> None:
        last = self.segments[-1] if self.segments else None
        if last and last.paddr + last.size == pa and last.offset + last.size == offset:
            self.segments[-1] = Segment(last.paddr, last.size + n, last.offset, last.size + n)
        else:
            self.segments.append(Segment(pa, n, offset, n))

    def _place(self, pa: int, pages: memoryview) -> None:
        while len(pages):
            pfn = pa // PAGE_SIZE
            where = self.layout.place(pfn)
            if where is None:
                nxt = self.layout.next_run(pfn)
                n = len(pages) if nxt is None else min(len(pages), (nxt - pfn) * PAGE_SIZE)
                os.pwrite(self.fd, pages[:n], self.kept_at)
                self._add_segment(pa, n, self.kept_at)
                self.kept_at += n
            else:
                offset, left = where
                n = min(len(pages), left * PAGE_SIZE)
                _write_nonzero(self.fd, pages[:n], offset, self.writeback)
                self._add_segment(pa, n, offset)
            pa += n
            pages = pages[n:]


def _write_nonzero(fd: int, data: memoryview, offset: int, writeback: bool = True) -> None:
    """Write the pages of ``data`` that are not all zero at ``offset`` onward; zero pages stay holes. With
    ``writeback`` the writeback of what was written starts at once (dmp/pagecopy.py start_writeback), so
    the fsync before the rename finds little left."""
    for start, end in nonzero_spans(data, 0):
        at, view = offset + start, data[start:end]
        while len(view):
            n = os.pwrite(fd, view, at)
            at, view = at + n, view[n:]
    if writeback:
        start_writeback(fd, offset, len(data))


@dataclass(frozen=True)
class StreamedDump:
    """What finish_stream found and wrote: Windows' facts, the plan carried out, the writer's result,
    the source of the finished analysis (its file is the DMP; valid until the output is closed), and
    whether the DMP had to be rewritten because the runs differed from the layout."""

    facts: WindowsFacts
    plan: DumpPlan
    written: WriteResult
    source: PhysicalSource
    rewritten: bool


def streamed_source(sink: DmpStreamSink, path: os.PathLike[str] | str) -> PhysicalSource:
    """The guest memory the stream carried, as convert would read it from the ELF: pages from the DMP and
    the area after it, vCPU notes and machine from the stream's head.

    :raises WincrashError: the stream ended before its head (QEMU wrote no ELF header).
    """
    layout = sink.elf.layout
    if layout is None:
        raise WincrashError("the dump stream ended before QEMU wrote the ELF header and notes")
    reader = open(sink.fd, "rb", closefd=False)  # noqa: SIM115 - the output owns the descriptor
    source = PhysicalSource(os.fspath(path), reader, "qemu-elf", list(sink.segments), list(layout.cpus),  # type: ignore[arg-type]
                            layout.machine)
    return source


def finish_stream(sink: DmpStreamSink, path: os.PathLike[str] | str, fmt: str,
                  rewrite: Callable[[PhysicalSource, DumpPlan], WriteResult],
                  advance: Callable[[int], None]) -> StreamedDump:
    """Find Windows in what was streamed, plan, and write the header and patches (or rewrite the DMP).

    ``rewrite(source, plan)`` writes the whole DMP elsewhere (write_dump into a new atomic output) when the
    plan's runs differ from the layout the pages were placed by.

    :raises WincrashError: no Windows in the streamed memory (what locate_windows raises), or a stream
        that ended early.
    """
    source = streamed_source(sink, path)
    facts = locate_windows(source)
    plan = plan_dump(facts, source)
    wanted = stream_layout(plan.header.runs, fmt)
    if wanted.runs != sink.layout.runs or wanted.data_offset != sink.layout.data_offset:
        return StreamedDump(facts, plan, rewrite(source, plan), source, True)
    patched = []
    for pfn in patch_pages(plan.patches):
        where = sink.layout.place(pfn)
        if where is not None:
            patched.append(Segment(pfn * PAGE_SIZE, PAGE_SIZE, where[0], PAGE_SIZE))
    patch_source = PhysicalSource(source.path, source.fh, "qemu-elf", patched, [], source.machine)
    sink.out.seek(0)
    written = write_dump(patch_source, plan, fmt, sink.out, advance)
    return StreamedDump(facts, plan, written, source, False)


def finish_kernel(sink: DmpStreamSink, path: os.PathLike[str] | str, out: BinaryIO,
                  advance: Callable[[int], None]) -> StreamedDump:
    """Cut a kernel dump ('SDMP') into ``out`` from what ``sink`` staged (any layout: every streamed page is
    in its file): Windows found and the kernel's pages selected (plan_dump fmt="kernel") in exactly the
    bytes convert reads from the ELF, then dmp/bitmap_writer.py write_kernel. ``sink``'s file is only read;
    ``advance(n)`` gets the bytes of pages written.

    :raises WincrashError: no Windows in the streamed memory, or a stream that ended early.
    """
    source = streamed_source(sink, path)
    facts = locate_windows(source)
    plan = plan_dump(facts, source, "kernel")
    written = write_dump(source, plan, "kernel", out, advance)
    return StreamedDump(facts, plan, written, source, False)
