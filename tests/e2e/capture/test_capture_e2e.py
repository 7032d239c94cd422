"""`wincrash capture` end to end: the synthetic Windows running in real QEMU (TCG), crashed by NMI
through its own IDT, dumped over QMP, converted, and read back with kdmp-parser.

Expected values come from the generator's ground truth and from QEMU's own ELF notes, never from
our converter.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from capture_helpers import read_qemu_elf
from helpers import dump_read_va, first_module_name, run_wincrash, u64
from wincrash_testkit.testguest.memory import synth_memory

kdmp_parser = pytest.importorskip("kdmp_parser", reason="kdmp-parser is not installed")
pytestmark = pytest.mark.qemu
PAGE = 0x1000






@pytest.mark.slow
@pytest.mark.parametrize("build,cpus,fmt", [(19041, 2, "full"), (7601, 1, "bitmap")])
def test_capture_crash_gives_a_bugcheck_dump(make_guest, tmp_path: Path, build: int, cpus: int, fmt: str) -> None:
    memory = synth_memory(build=build, cpus=cpus, ram_mib=256, seed=build)
    guest = make_guest(memory=memory, ram_mib=256)
    t = memory.truth
    out = tmp_path / "MEMORY.DMP"
    proc = run_wincrash("capture", guest.qmp_path, "-o", out, "--crash", "--keep-elf", "--wait", "30",
                        "--format", fmt, "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["panic"]["event"] == "GUEST_PANICKED"
    assert result["conversion"]["bugcheck"].startswith("0x00000080")
    assert guest.status() == "guest-panicked"  # the dump left the crashed guest as it was
    elf = Path(result["elf"])
    assert (out.stat().st_mode & 0o777) == (elf.stat().st_mode & 0o777) == 0o600

    p = kdmp_parser.KernelDumpParser(out)
    h = p.header
    assert h.DumpType.value == (1 if fmt == "full" else 5)
    assert h.BugCheckCode == 0x80 and list(h.BugCheckCodeParameter) == [0x4F4454, 0, 0, 0]
    assert h.MinorVersion == build and h.NumberProcessors == cpus
    assert h.KdDebuggerDataBlock == t["kdbg"]["va"]
    assert h.PsLoadedModuleList == t["ps_loaded_module_list"]
    assert h.DirectoryTableBase in (t["dtb"], t["processes"][0]["dtb"])
    dtb = h.DirectoryTableBase
    kdbg = dump_read_va(p, h.KdDebuggerDataBlock, 0x340, dtb)
    assert kdbg[0x10:0x14] == b"KDBG" and u64(kdbg, 0x18) == t["kernel"]["base"]  # decoded in place
    assert first_module_name(p).lower() == "ntoskrnl.exe"
    # The contexts are the registers QEMU saw (our firmware's), per vCPU, at each KPRCB's context.
    notes, _ = read_qemu_elf(elf)
    for cpu, note in zip(t["processors"], notes, strict=True):
        ctx = dump_read_va(p, cpu["context_va"], 0x4D0, dtb)
        assert u64(ctx, 0xF8) == note["rip"] and u64(ctx, 0xF0) == note["r15"] == 0x57494E4352415348
        assert struct.unpack_from("<H", ctx, 0x38)[0] == 0x10  # Windows' kernel CS, from its own GDT
        assert note["gs_base"] == cpu["kpcr"] and note["cr3"] == t["dtb"]
    info = run_wincrash("info", out)
    assert info.returncode == 0, info.stdout + info.stderr


def test_capture_without_crash_and_errors(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    guest = make_guest(memory=synth_memory(cpus=1, ram_mib=256), ram_mib=256)
    out = tmp_path / "live.dmp"
    proc = run_wincrash("capture", guest.qmp_path, "-o", out, check=True)
    assert "bugcheck" in proc.stdout and "sound" in proc.stdout
    assert guest.status() == "running"  # a live dump: the guest carries on
    assert sorted(x.name for x in tmp_path.iterdir()) == ["live.dmp"]  # the ELF was removed
    assert kdmp_parser.KernelDumpParser(out).header.BugCheckCode != 0x80
    again = run_wincrash("capture", guest.qmp_path, "-o", out)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_capture_crash_on_a_vm_without_os(make_guest, tmp_path: Path) -> None:  # noqa: ANN001
    guest = make_guest(with_os=False)
    proc = run_wincrash("capture", guest.qmp_path, "-o", tmp_path / "M.DMP", "--crash", "--wait", "2")
    assert proc.returncode == 1 and "no panic reported within 2 s" in proc.stderr, proc
    assert list(tmp_path.iterdir()) == []
