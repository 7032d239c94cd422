"""`wincrash prepare` through the real CLI: dry run, then a real write read back by independent readers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from helpers import run_wincrash

pytestmark = [pytest.mark.guestfs, pytest.mark.slow]

CRASH_CONTROL = r"\ControlSet001\Control\CrashControl"
EXPECTED = {
    (CRASH_CONTROL, "CrashDumpEnabled"): (1, "REG_DWORD"),
    (CRASH_CONTROL, "NMICrashDump"): (1, "REG_DWORD"),
    (CRASH_CONTROL, "AutoReboot"): (0, "REG_DWORD"),
    (CRASH_CONTROL, "Overwrite"): (1, "REG_DWORD"),
    (CRASH_CONTROL, "AlwaysKeepMemoryDump"): (1, "REG_DWORD"),
    (CRASH_CONTROL, "DumpFile"): ("%SystemRoot%\\MEMORY.DMP", "REG_EXPAND_SZ"),
    (r"\ControlSet001\Services\kbdhid\Parameters", "CrashOnCtrlScroll"): (1, "REG_DWORD"),
    (r"\ControlSet001\Services\i8042prt\Parameters", "CrashOnCtrlScroll"): (1, "REG_DWORD"),
}


def _all_values(path: Path) -> dict[tuple[str, str], tuple[int, bytes]]:
    """Every value of a hive, by (key path, name), read on the host with the hivex library."""
    import hivex

    h = hivex.Hivex(str(path))
    values: dict[tuple[str, str], tuple[int, bytes]] = {}
    stack = [(h.root(), "")]
    while stack:
        node, where = stack.pop()
        for value in h.node_values(node):
            values[(where, h.value_key(value))] = h.value_value(value)
        for sub in h.node_children(node):
            stack.append((sub, where + "\\" + h.node_name(sub)))
    return values


def _regipy_values(path: Path, key: str) -> dict[str, tuple[object, str]]:
    from regipy.registry import RegistryHive

    logging.getLogger("regipy").setLevel(logging.ERROR)
    return {v.name: (v.value, v.value_type) for v in RegistryHive(str(path)).get_key(key).iter_values()}


def test_dry_run_writes_nothing(disks, sha256, tmp_path: Path) -> None:
    before = sha256(disks.prepare_a), sha256(disks.base_a)
    proc = run_wincrash("prepare", disks.prepare_a, "--dry-run", "--dump", "complete", "--keyboard",
                        "--backup-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (sha256(disks.prepare_a), sha256(disks.base_a)) == before
    assert "applying to ControlSet001" in proc.stdout
    assert "CrashControl\\CrashDumpEnabled: 7 -> 1" in proc.stdout
    assert "CrashControl\\AutoReboot: 1 -> 0" in proc.stdout
    assert "CrashControl\\NMICrashDump: (not set) -> 1" in proc.stdout
    assert "dry run: nothing was written" in proc.stdout
    assert "--ram" in proc.stderr  # a complete dump without --ram: says it cannot check the pagefile
    assert list(tmp_path.iterdir()) == []  # no backup on a dry run


def test_prepare_writes_values_and_keeps_everything_else(disks, sha256, tmp_path: Path) -> None:
    import guestfs

    base_before = sha256(disks.base_a)
    backups = tmp_path / "backups"
    backups.mkdir()
    proc = run_wincrash("prepare", disks.prepare_a, "--dump", "complete", "--keyboard", "--ram", "8G",
                        "--backup-dir", backups, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["control_set"] == "ControlSet001" and result["dry_run"] is False
    assert sha256(disks.base_a) == base_before, "the backing file must not change"

    backup = Path(result["backup"])
    assert backup.parent == backups.resolve()
    assert backup.read_bytes() == disks.hive10.read_bytes()
    assert backup.stat().st_mode & 0o777 == 0o600
    changes = {c["path"].removeprefix("HKLM\\SYSTEM"): c for c in result["changes"]}
    assert changes[CRASH_CONTROL + "\\CrashDumpEnabled"]["before"] == 7
    assert changes[CRASH_CONTROL + "\\CrashDumpEnabled"]["after"] == 1

    # read the hive back out of the image with a fresh appliance
    modified = tmp_path / "SYSTEM.after"
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(disks.prepare_a), readonly=True, format="qcow2")
    g.launch()
    g.mount_ro("/dev/sda2", "/")
    g.download("/Windows/System32/config/SYSTEM", str(modified))
    g.close()

    # regipy (an independent parser) sees the new values, and the other values of those keys unchanged
    for key in {k for k, _ in EXPECTED}:
        after = _regipy_values(modified, key)
        original = _regipy_values(disks.hive10, key)
        for (where, name), expected in EXPECTED.items():
            if where == key:
                assert after[name] == expected, (key, name)
        untouched = {n: v for n, v in original.items() if (key, n) not in EXPECTED}
        assert {n: after[n] for n in untouched} == untouched
        assert set(after) == set(original) | {n for k, n in EXPECTED if k == key}

    # every one of the ~90,000 values of the whole hive is unchanged except ours
    before_all, after_all = _all_values(disks.hive10), _all_values(modified)
    ours = {(k, n) for k, n in EXPECTED}
    assert {k: v for k, v in after_all.items() if k not in ours} == {k: v for k, v in before_all.items()
                                                                      if k not in ours}
    assert len(before_all) > 50_000


@pytest.mark.guestfs
@pytest.mark.slow
def test_prepare_twice_changes_nothing_the_second_time(disks, sha256, tmp_path: Path) -> None:
    """Values already as asked: no hive write, no backup kept, the image unchanged."""
    backups = tmp_path / "again"
    backups.mkdir()
    args = ("prepare", disks.prepare_a, "--dump", "kernel", "--backup-dir", backups, "--json")
    first = run_wincrash(*args)
    assert first.returncode == 0, first.stderr
    before = sha256(disks.prepare_a)
    kept = sorted(backups.iterdir())
    second = run_wincrash(*args)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["unchanged"] is True and result["backup"] is None
    assert all(c["before"] == c["after"] for c in result["changes"])
    assert sorted(backups.iterdir()) == kept, "no second backup"
    assert sha256(disks.prepare_a) == before
