"""`wincrash convert` on a real QEMU savevm/migration stream of the Windows-like test guest.

The stream comes from a real qemu-system-x86_64 (TCG) running the synthetic Windows, saved with
`migrate "exec:cat > file"` (what `virsh save` does); volatility3 parses the stream, kdmp-parser
checks our output.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import kdmp_parser
import pytest
from helpers import run_wincrash

pytestmark = [pytest.mark.qemu]


@pytest.fixture(scope="module")
def savevm(tmp_path_factory):
    for tool in ("qemu-system-x86_64", "as", "ld", "objcopy"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    from wincrash_testkit.testguest.memory import synth_memory
    from wincrash_testkit.testguest.vm import TestGuest

    work = Path(tmp_path_factory.mktemp("sv"))
    memory = synth_memory(build=17763, cpus=2, ram_mib=256, seed=11)
    stream = work / "vm.savevm"
    with TestGuest(work / "vm", memory=memory, ram_mib=256) as guest:
        guest.qmp("stop")
        guest.qmp("dump-guest-memory", {"paging": False, "protocol": f"file:{work / 'vm.elf'}"})
        guest.qmp("migrate", {"uri": f"exec:cat > {stream}"})
        deadline = time.monotonic() + 60
        while guest.qmp("query-migrate").get("status") not in ("completed", "failed"):  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "migration did not finish"
            time.sleep(0.1)
    assert stream.read_bytes()[:4] == b"QEVM"
    return memory, stream, work


def test_info_names_the_stream(savevm):
    _memory, stream, _work = savevm
    proc = run_wincrash("info", stream, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["kind"] == "qemu-savevm"


def test_savevm_converts_to_a_loadable_dump(savevm):
    memory, stream, work = savevm
    truth = memory.truth
    out = work / "MEMORY.DMP"
    proc = run_wincrash("convert", stream, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["windows"]["methods"]["directory_table_base"].startswith("scan")
    assert any("no vCPU register notes" in w for w in result["warnings"])
    p = kdmp_parser.KernelDumpParser(out)
    h = p.header
    assert h.MinorVersion == 17763 and h.NumberProcessors == 2
    assert h.KdDebuggerDataBlock == truth["kdbg"]["va"]
    assert h.PsLoadedModuleList == truth["ps_loaded_module_list"]
    dtb = h.DirectoryTableBase
    kdbg = p.read_virtual_page(h.KdDebuggerDataBlock & ~0xFFF, dtb)
    off = h.KdDebuggerDataBlock & 0xFFF
    assert bytes(kdbg[off + 0x10:off + 0x14]) == b"KDBG"
    assert struct.unpack_from("<Q", bytes(kdbg), off + 0x18)[0] == truth["kernel"]["base"]
    # The same stopped guest was also dumped as an ELF: both conversions must hold the same memory.
    elf_out = work / "from-elf.DMP"
    assert run_wincrash("convert", work / "vm.elf", "-o", elf_out).returncode == 0
    q = kdmp_parser.KernelDumpParser(elf_out)
    compared = 0
    for pfn in sorted(memory.pages)[:3000]:
        a, b = p.read_physical_page(pfn << 12), q.read_physical_page(pfn << 12)
        if b is None:
            continue
        assert a is not None and bytes(a) == bytes(b), f"page 0x{pfn:x}"
        compared += 1
    assert compared > 100
