"""Text output of `grab-pagefile` and `prepare` (stdout only; warnings and --json are wincrash.render's job)."""

from __future__ import annotations

from typing import Any

from wincrash.disk.crashcontrol import PrepareResult
from wincrash.disk.grab import GrabResult

NO_DUMP_TEXT = ("holds no crash dump (it does not start with 'PAGEDU64'/'PAGEDUMP': Windows has reused it "
                "since the crash, e.g. after a reboot, or never crashed)")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _windows_dir(letter: str, systemroot: str) -> str:
    return f"{letter}:{systemroot.replace('/', chr(92))}"


def _setting(value: Any) -> str:
    """A registry value as Windows tools show it: REG_MULTI_SZ entries joined by '; ', text as is."""
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value) or "(empty)"
    return str(value)


def print_grab(result: GrabResult) -> None:
    """What was found and copied, and what each pagefile held."""
    for install in result.installs:
        product = install.product if install.product and install.product.lower() != "unknown" else None
        how = ("inspection" + (f": {product}" if product else "")) if install.found_by == "inspection" \
            else "scanning NTFS"
        print(f"Windows on {install.device} ({_windows_dir(install.letter, install.systemroot)}, found by {how}), "
              f"control set {install.control_set or 'unknown'}")
        for key in ("CrashDumpEnabled", "DumpFile", "MinidumpDir", "PagingFiles"):
            if install.settings.get(key) is not None:
                print(f"  {key}: {_setting(install.settings[key])}")
        for note in install.notes:
            print(f"  note: {note}")
    for f, target in result.copied:
        print(f"copied {f.windows_path} -> {target} ({_mib(f.size)})")
    if not result.copied:
        print("no crash-related files found")
    for pagefile, dump in result.dumps:
        if dump is None:
            print(f"{pagefile.name} {NO_DUMP_TEXT}")
            continue
        print(f"{pagefile.name} holds a crash dump: wrote {dump.path} ({dump.size:,} bytes, {dump.kind or '?'})")
        if dump.bugcheck:
            params = ", ".join(dump.bugcheck.get("parameters", []))
            print(f"  bugcheck {dump.bugcheck.get('code')} {dump.bugcheck.get('name') or ''} ({params})")
        for problem in dump.problems:
            print(f"  problem: {problem}")
        if dump.sound:
            print("  the dump passes info's soundness checks")


def _show(value: Any) -> str:
    return "(not set)" if value is None else repr(value) if isinstance(value, str) else str(value)


def print_prepare(result: PrepareResult) -> None:
    """The before -> after table of every value, and where the original hive went."""
    install = result.install
    print(f"Windows on {install.device} ({_windows_dir(install.letter, install.systemroot)}); "
          f"applying to {result.control_set} (the control set Select\\Current names)")
    if result.backup:
        print(f"original SYSTEM hive saved to {result.backup}")
    for c in result.changes:
        created = " (new key)" if c.key_created else ""
        print(f"  {c.where(result.control_set)}: {_show(c.before)} -> {_show(c.after)}{created}")
    if result.dry_run:
        print("dry run: nothing was written")
    elif result.unchanged:
        print("every value is already set: nothing was written, no backup kept")
    else:
        print("written and read back; the values take effect at the guest's next boot")
