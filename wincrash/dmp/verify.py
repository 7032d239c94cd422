"""Check a DMP just written against what was meant to be written, before it gets its final name.

A cheap structural check, not a re-read of the pages: the header read back with dmp/reader.py (the
reader `info` uses), its run list compared with the plan's, and for bitmap/kernel dumps the bitmap's
population count compared with TotalPresentPages and with the pages inside the runs, and the file's
size compared with what the headers describe. Time linear in the bitmap (1 MiB reads), memory O(1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

from wincrash.dmp.pagemap import bitmap_counts
from wincrash.dmp.reader import BITMAP_TYPES, read_dmp
from wincrash.errors import WincrashError
from wincrash.formats.dump import DUMP_HEADER64_SIZE, PAGE_SIZE, DumpType

EXPECTED_TYPE = {"full": DumpType.FULL, "bitmap": DumpType.BITMAP, "kernel": DumpType.BITMAP}


def verify_written(fh: BinaryIO, fmt: str, runs: Sequence[tuple[int, int]], present_pages: int | None = None) -> None:
    """Raise WincrashError("the dump just written is inconsistent: ...") unless the DMP open as ``fh``
    is a 64-bit ``fmt`` dump ("full", "bitmap", "kernel") whose header holds ``runs`` (BasePage,
    PageCount, in pages) and whose bitmap (bitmap and kernel) has exactly ``present_pages`` bits set
    (default: every page of the runs), all inside the runs, with the file as large as the headers say.
    """
    problem = _problem(fh, fmt, tuple((int(b), int(c)) for b, c in runs), present_pages)
    if problem is not None:
        raise WincrashError(f"the dump just written is inconsistent ({problem}): not kept; please report this")


def _problem(fh: BinaryIO, fmt: str, runs: tuple[tuple[int, int], ...], present_pages: int | None) -> str | None:
    fh.flush()
    try:
        dmp = read_dmp(fh)
    except WincrashError as exc:
        return str(exc)
    if not dmp.is64 or dmp.dump_type != EXPECTED_TYPE[fmt]:
        return f"DumpType {dmp.dump_type}, expected {int(EXPECTED_TYPE[fmt])}"
    if dmp.runs is None or dmp.runs.runs != runs or dmp.runs.number != len(runs):
        return "the header's run list differs from the plan's"
    in_runs = sum(count for _, count in runs)
    if dmp.runs.pages != in_runs:
        return f"NumberOfPages {dmp.runs.pages} but the runs hold {in_runs} pages"
    if any(b1 + c1 > b2 for (b1, c1), (b2, _c2) in zip(runs, runs[1:], strict=False)) or \
            any(c == 0 for _, c in runs):
        return "the runs are unsorted, overlapping or empty"
    if dmp.dump_type == DumpType.FULL:
        want = DUMP_HEADER64_SIZE + in_runs * PAGE_SIZE
        return None if dmp.size == want else f"{dmp.size:,} bytes, the runs need {want:,}"
    assert dmp.dump_type in BITMAP_TYPES
    summary = dmp.bitmap
    if summary is None:
        return dmp.bitmap_problem or "no bitmap summary"
    if summary.bitmap_end > summary.first_page or summary.first_page > dmp.size:
        return f"FirstPage 0x{summary.first_page:x} does not follow the bitmap (ends at 0x{summary.bitmap_end:x})"
    if summary.pages < max((b + c for b, c in runs), default=0):
        return f"the bitmap's {summary.pages:,} bits do not cover the runs"
    want_present = in_runs if present_pages is None else present_pages
    counted, inside = bitmap_counts(fh, dmp)
    if not counted == inside == summary.present_pages == want_present:
        return (f"{counted:,} bits set ({inside:,} inside the runs), TotalPresentPages {summary.present_pages:,}, "
                f"{want_present:,} pages written")
    want = summary.first_page + want_present * PAGE_SIZE
    return None if dmp.size == want else f"{dmp.size:,} bytes, the bitmap needs {want:,}"
