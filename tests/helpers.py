"""Helpers for tests (import as `from helpers import ...`; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Real Windows data lives beside the project, never inside it (see ../shared/samples/README.md).
SHARED_SAMPLES = REPO.parent / "shared" / "samples"


def sample_file(relative: str) -> Path:
    """One file of ../shared/samples, or skip the test with a reason."""
    path = SHARED_SAMPLES / relative
    if not path.is_file():
        pytest.skip(f"real sample {relative} not available ({path} is absent)")
    return path


def run_wincrash(*args: str | os.PathLike, check: bool = False, timeout: float = 600,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `wincrash` CLI in a subprocess, as a user would, and capture its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "wincrash", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"wincrash {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def wait_for_output_started(proc: subprocess.Popen, folder: Path, timeout: float = 60) -> bool:  # type: ignore[type-arg]
    """Wait until ``proc`` writes an output in ``folder``: a nameless O_TMPFILE it holds open (its
    /proc/PID/fd link reads ``folder/#INODE (deleted)``) or a hidden ``.*.wincrash-partial-*`` file.
    False when neither appeared within ``timeout`` seconds or the process ended."""
    import time

    deadline = time.monotonic() + timeout
    fds = Path(f"/proc/{proc.pid}/fd")
    while time.monotonic() < deadline and proc.poll() is None:
        if list(folder.glob(".*.wincrash-partial-*")):
            return True
        for fd in list(fds.iterdir()) if fds.is_dir() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(f"{folder}/#") or target.startswith(f"{folder}/.") and "wincrash" in target:
                return True
        time.sleep(0.05)
    return False


def dump_read_va(parser, va: int, size: int, dtb: int) -> bytes:  # noqa: ANN001 - a kdmp_parser.KernelDumpParser
    """Bytes at a virtual address of a DMP, read through kdmp-parser (an independent reader); asserts mapping."""
    out = b""
    while size > 0:
        page = parser.read_virtual_page(va & ~0xFFF, dtb)
        assert page is not None, f"0x{va:x} does not translate"
        n = min(size, 0x1000 - (va & 0xFFF))
        out += bytes(page[va & 0xFFF:(va & 0xFFF) + n])
        va, size = va + n, size - n
    return out


def u64(data: bytes, off: int = 0) -> int:
    return int.from_bytes(data[off:off + 8], "little")


def first_module_name(parser) -> str:  # noqa: ANN001
    """BaseDllName of the first PsLoadedModuleList entry of a DMP (ntoskrnl.exe when the dump is right)."""
    dtb = parser.header.DirectoryTableBase
    first = u64(dump_read_va(parser, parser.header.PsLoadedModuleList, 8, dtb))
    entry = dump_read_va(parser, first, 0x68, dtb)
    length, buffer = int.from_bytes(entry[0x58:0x5A], "little"), u64(entry, 0x60)
    return dump_read_va(parser, buffer, length, dtb).decode("utf-16-le")


def sparse_copy(src: Path, dst: Path, length: int | None = None) -> None:
    """Copy the first ``length`` bytes (all by default) of a sparse file, keeping its holes holes: only the data
    extents (SEEK_DATA/SEEK_HOLE) are read and written, so a 1 GiB guest ELF with a few MiB of data copies fast."""
    size = src.stat().st_size if length is None else length
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.truncate(size)
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = min(os.lseek(fin.fileno(), start, os.SEEK_HOLE), size)
            if start >= end:
                break
            fin.seek(start)
            fout.seek(start)
            while start < end:
                chunk = fin.read(min(end - start, 1 << 20))
                fout.write(chunk)
                start += len(chunk)
            pos = end


def dmp_header64(runs, **overrides) -> bytes:  # noqa: ANN001 - runs: [(base page, page count)]
    """A DUMP_HEADER64 (0x2000 bytes) written by wincrash's own header builder for ``runs``; ``overrides``
    replace HeaderFields values (build 19041, bugcheck 0x80, one processor, a zero context by default)."""
    from wincrash.dmp.header import HeaderFields, build_header64
    from wincrash.formats.context import CONTEXT_AMD64_SIZE

    base = dict(build=19041, directory_table_base=0x1AD000, pfn_database=0, ps_loaded_module_list=0,
                ps_active_process_head=0, kd_debugger_data_block=0, number_processors=1, bugcheck_code=0x80,
                bugcheck_parameters=(0, 0, 0, 0), runs=runs, context=bytes(CONTEXT_AMD64_SIZE))
    base.update(overrides)
    return build_header64(HeaderFields(**base))


def pfn_page(pfn: int) -> bytes:
    """A 4 KiB page holding its own page number (u64, repeated): a misplaced page shows."""
    return pfn.to_bytes(8, "little") * (0x1000 // 8)
