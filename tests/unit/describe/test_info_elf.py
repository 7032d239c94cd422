"""`wincrash info` on a real QEMU dump-guest-memory ELF, taken from a real qemu-system-x86_64 (TCG)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import run_wincrash

pytestmark = [pytest.mark.qemu]

QEMU = shutil.which("qemu-system-x86_64")


async def _dump(sock: Path, out: Path) -> None:
    from qemu.qmp import QMPClient

    client = QMPClient("info-test")
    for _ in range(100):
        try:
            await client.connect(str(sock))
            break
        except Exception:  # noqa: BLE001 - QEMU not listening yet
            await asyncio.sleep(0.1)
    await client.execute("dump-guest-memory", {"paging": False, "protocol": f"file:{out}"})
    await client.disconnect()


@pytest.fixture(scope="module")
def qemu_elf(tmp_path_factory) -> Path:
    if not QEMU:
        pytest.skip("qemu-system-x86_64 is not installed")
    tmp = tmp_path_factory.mktemp("qemu")
    sock, out = tmp / "qmp.sock", tmp / "vm.elf"
    proc = subprocess.Popen([QEMU, "-accel", "tcg", "-m", "128", "-smp", "2", "-display", "none", "-nodefaults",
                             "-S", "-qmp", f"unix:{sock},server=on,wait=off"])
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        asyncio.run(_dump(sock, out))
    finally:
        proc.kill()
        proc.wait()
    return out


def test_real_qemu_elf_summary(qemu_elf):
    proc = run_wincrash("info", qemu_elf, "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    data = json.loads(proc.stdout)
    assert data["kind"] == "qemu-elf"
    assert data["vcpus"] == 2 and len(data["cpus"]) == 2
    assert data["memory"]["bytes"] >= 128 * 2**20
    starts = [int(s["start"], 16) for s in data["memory"]["segments"]]
    assert 0 in starts and 0xFFFC0000 in starts  # RAM from 0 and the BIOS ROM, as DESIGN §3 says
    # QEMU stopped before the first instruction: the reset vector, real mode.
    assert data["cpus"][0]["mode"] == "real" and data["cpus"][0]["rip"] == "0xfff0"


def test_truncated_qemu_elf_names_missing_ranges(qemu_elf, tmp_path):
    cut = tmp_path / "cut.elf"
    with open(qemu_elf, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(64 * 2**20))
    proc = run_wincrash("info", cut, "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert any("missing from the file" in p for p in data["problems"])
