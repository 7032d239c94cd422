"""Independent readers for the tests: UNMODIFIED MemProcFS and volatility3 run on a dump as a user would.

Each reader runs in a child process (MemProcFS keeps native global state and prints to stdout; volatility3
is run through its own CLI) and comes back as plain, frozen values. When a reader cannot analyse a dump,
:class:`ReaderFailed` says why, quoting the reader's own log lines (MemProcFS ``-v -vv -printf``,
volatility3 ``-vvv``); when a reader is not installed, :class:`ReaderUnavailable` says so.

What each reader needs from a dump (measured on converted synthetic guests, see issue 10):
MemProcFS 5.19 (LeechCore 2.23) refuses files under 16 MiB; validates the header DirectoryTableBase by
requiring a self-map and >= 6 present, writable, supervisor, non-NX, non-large kernel-half PML4 entries;
finds ntoskrnl by 'MZ' + a 'POOLCODE' section name in its first page; walks ActiveProcessLinks and gives up
with fewer than 11 entries; takes the build from smss.exe (parent 4) and its PEB or the NtBuildNumber
export; uses header PfnDataBase verbatim as the PFN array. volatility3 2.28 ignores the header DTB and
scans physical 0x150000-0x2A0000, 0x550000-0x6F0000, 0x900000-0xA00000, then 0xA00000-0x5A00000 for a
PML4 with exactly one self-reference in slots 0x100-0x1FE.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MEMPROCFS_MIN_FILE = 16 * 1024 * 1024  # LeechCore's file device refuses smaller dumps (measured)
_RESULT = "READER-RESULT "


class ReaderUnavailable(RuntimeError):
    """The reader is not installed in this environment (the message names the missing package)."""


class ReaderFailed(RuntimeError):
    """The reader ran but could not analyse the dump; ``reason`` quotes the reader's own log lines."""

    def __init__(self, reader: str, reason: str, log: str = "") -> None:
        super().__init__(f"{reader}: {reason}")
        self.reader = reader
        self.reason = reason
        self.log = log


@dataclass(frozen=True)
class Process:
    """One process as a reader lists it: PID, image name (EPROCESS.ImageFileName, <= 14 chars), parent PID."""

    pid: int
    name: str
    ppid: int


@dataclass(frozen=True)
class Module:
    """One kernel module: BaseDllName, DllBase (canonical 64-bit VA), SizeOfImage (bytes)."""

    name: str
    base: int
    size: int


@dataclass(frozen=True)
class ReaderView:
    """What a reader made of a dump. ``pfn_database`` is MemProcFS's PFN array base (None for volatility3)."""

    reader: str
    processes: tuple[Process, ...]
    modules: tuple[Module, ...]
    kernel_base: int
    build: int
    pfn_database: int | None = None


def canonical(va: int) -> int:
    """Sign-extend a 48-bit virtual address (volatility3 prints kernel addresses without the top 16 bits)."""
    va &= (1 << 48) - 1
    return va | 0xFFFF_0000_0000_0000 if va & (1 << 47) else va


# --------------------------------------------------------------------------------------------- MemProcFS

_MEMPROCFS_CHILD = r"""
import json, sys
import memprocfs
tag = sys.argv[2]
try:
    vmm = memprocfs.Vmm(['-device', sys.argv[1], '-disable-symbolserver', '-waitinitialize',
                         '-v', '-vv', '-printf'])
except Exception as exc:
    print(tag + json.dumps({"error": str(exc)}), flush=True)
    sys.exit(0)
out = {"build": vmm.get_config(memprocfs.OPT_WIN_VERSION_BUILD)}
out["processes"] = [[p.pid, p.name, p.ppid] for p in vmm.process_list()]
system = vmm.process(4)
out["modules"] = [[m.name, m.base, m.image_size] for m in system.module_list()]
out["kernel_base"] = system.module("ntoskrnl.exe").base
out["pfn_database"] = int(vmm.vfs.read('/sys/memory/pfnaddr.txt', 64).decode().strip() or "0", 16)
print(tag + json.dumps(out), flush=True)
vmm.close()
"""


def memprocfs_available() -> bool:
    """True when the PyPI package `memprocfs` imports (it ships LeechCore and the info.db symbols)."""
    try:
        import memprocfs  # noqa: F401
    except ImportError:
        return False
    return True


def _memprocfs_reason(log: str) -> str:
    """The first line of MemProcFS/LeechCore's own log that says why initialisation stopped."""
    keys = ("Failed opening file", "Unable to verify", "Initialization Failed", "Unable to locate",
            "Unsupported build", "Unable to walk", "Failed")
    for key in keys:
        for line in log.splitlines():
            if key in line:
                return line.strip()
    return "initialisation failed without a log line"


def memprocfs_view(dump: os.PathLike | str, timeout: float = 300) -> ReaderView:
    """Run MemProcFS (offline, built-in info.db symbols) on ``dump`` and return what it lists.

    Raises ReaderUnavailable without the `memprocfs` package, ReaderFailed (with MemProcFS's own log line)
    when it refuses the file, cannot validate the DTB, find ntoskrnl or walk the process list.
    """
    if not memprocfs_available():
        raise ReaderUnavailable("the PyPI package memprocfs is not installed (pip install memprocfs)")
    dump = Path(dump)
    if dump.stat().st_size < MEMPROCFS_MIN_FILE:
        # LeechCore says only "Failed opening file"; say why.
        raise ReaderFailed("MemProcFS", f"file is {dump.stat().st_size:,} bytes: LeechCore refuses dump files "
                           f"under 16 MiB ('DEVICE: ERROR: Failed opening file')")
    proc = subprocess.run([sys.executable, "-c", _MEMPROCFS_CHILD, str(dump), _RESULT], capture_output=True, text=True,
                          timeout=timeout, errors="replace")
    log = proc.stdout + proc.stderr
    result = next((line[len(_RESULT):] for line in proc.stdout.splitlines() if line.startswith(_RESULT)), None)
    if result is None:
        raise ReaderFailed("MemProcFS", f"child exited {proc.returncode} without a result", log)
    data = json.loads(result)
    if "error" in data:
        raise ReaderFailed("MemProcFS", _memprocfs_reason(log), log)
    if not 2600 <= data["build"] <= 30000:
        raise ReaderFailed("MemProcFS", _memprocfs_reason(log) if "Unsupported build" in log
                           else f"build {data['build']}", log)
    return ReaderView(
        reader="MemProcFS",
        processes=tuple(Process(pid, name, ppid) for pid, name, ppid in data["processes"]),
        modules=tuple(Module(name, base, size) for name, base, size in data["modules"]),
        kernel_base=data["kernel_base"],
        build=data["build"],
        pfn_database=data["pfn_database"],
    )


# --------------------------------------------------------------------------------------------- volatility3

_ISF_NAME = re.compile(r"^([0-9A-Fa-f]{32})-?([0-9A-Fa-f]+)\.json\.xz$")


def volatility_symbols(isf_dir: os.PathLike | str, dest: os.PathLike | str) -> Path:
    """Arrange ISF files named GUID-AGE.json.xz (../shared/samples/isf) as volatility3 expects them.

    Returns ``dest``, holding windows/ntkrnlmp.pdb/<GUID><AGE>.json.xz symlinks (volatility3's
    symbols/windows/<pdb name>/<GUID><AGE>.json.xz layout). Raises FileNotFoundError when ``isf_dir`` is
    absent or holds no ISF file.
    """
    isf_dir, dest = Path(isf_dir), Path(dest)
    files = sorted(p for p in isf_dir.glob("*.json.xz") if _ISF_NAME.match(p.name)) if isf_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no volatility3 ISF files (GUID-AGE.json.xz) in {isf_dir}")
    target = dest / "windows" / "ntkrnlmp.pdb"
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        guid, age = _ISF_NAME.match(path.name).groups()
        link = target / f"{guid.upper()}{age}.json.xz"
        if not link.exists():
            link.symlink_to(path.resolve())
    return dest


def _vol_command() -> list[str]:
    exe = Path(sys.executable).with_name("vol")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("vol")
    if found is None:
        raise ReaderUnavailable("volatility3's `vol` command is not installed (pip install volatility3)")
    return [found]


def _vol_reason(log: str) -> str:
    """volatility3's own explanation, from its -vvv log (the automagic's last words)."""
    wanted = ("Unable to validate the plugin requirements", "WindowsIntelStacker hits", "DTB was found",
              "No suitable kernels found", "failed", "page fault")
    lines = [line.strip() for line in log.splitlines()
             if any(w in line for w in wanted) and "File \"" not in line and "import" not in line]
    return " | ".join(lines[-4:]) if lines else "no result and no log line"


def volatility_run(dump: os.PathLike | str, plugin: str, symbols: os.PathLike | str,
                   timeout: float = 900) -> list[dict]:
    """Rows of one volatility3 plugin (e.g. windows.pslist) run offline on ``dump`` with ``symbols``.

    Raises ReaderFailed quoting the -vvv log when the plugin's requirements cannot be met (no DTB found,
    no kernel, wrong symbols).
    """
    cmd = [*_vol_command(), "-q", "-vvv", "-r", "json", "--offline", "-s", str(symbols), "-f", str(dump), plugin]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    out = proc.stdout
    start = out.find("[")
    if proc.returncode != 0 or start < 0:
        raise ReaderFailed("volatility3", f"{plugin}: {_vol_reason(proc.stderr)}", proc.stderr)
    return json.loads(out[start:])


def volatility_view(dump: os.PathLike | str, symbols: os.PathLike | str) -> ReaderView:
    """windows.info, windows.pslist and windows.modules of volatility3 on ``dump``, as plain values."""
    info = {row["Variable"]: row["Value"] for row in volatility_run(dump, "windows.info", symbols)}
    build = int(str(info.get("Major/Minor", "0.0")).split(".")[-1])
    processes = tuple(Process(r["PID"], r["ImageFileName"], r["PPID"])
                      for r in volatility_run(dump, "windows.pslist", symbols))
    modules = tuple(Module(r["Name"], canonical(r["Base"]), r["Size"])
                    for r in volatility_run(dump, "windows.modules", symbols))
    return ReaderView("volatility3", processes, modules, canonical(int(str(info["Kernel Base"]), 0)), build)
