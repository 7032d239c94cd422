"""`wincrash convert` on a Windows root partition running Hyper-V inside KVM (generated guests).

The vCPU notes of some or all CPUs hold the hypervisor's CR3/GS/IDT; the converter must find NT by
scanning, say "Hyper-V detected" with the hypervisor image and the CPUs in hypervisor context, and
take those CPUs' NT registers from KPRCB.ProcessorState. Checked with kdmp-parser.
"""

from __future__ import annotations

import json
import struct

import kdmp_parser
import pytest
from helpers import dump_read_va, first_module_name, run_wincrash
from wincrash_testkit.synth.guest import GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf

CASES = [(17763, 4, None), (19041, 4, None), (19041, 4, (1, 3)), (17763, 1, None)]




@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}cpu-hv{'all' if c[2] is None else c[2]}")
def converted(request, tmp_path_factory):
    build, cpus, hv_cpus = request.param
    tmp = tmp_path_factory.mktemp("hv")
    spec = dict(build=build, cpus=cpus, ram_mib=1024, seed=build + cpus, hyperv=True, crashed=True)
    if hv_cpus is not None:
        spec["hv_cpus"] = hv_cpus
    guest = generate(GuestSpec(**spec))
    elf, out = tmp / "hv.elf", tmp / "MEMORY.DMP"
    with open(elf, "wb") as fh:
        write_qemu_elf(fh, guest)
    proc = run_wincrash("convert", elf, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    return guest, out, json.loads(proc.stdout)


def test_hyperv_is_reported(converted):
    guest, _out, result = converted
    hv = guest.truth["hyperv"]
    found = result["windows"]["hyperv"]
    assert found and found["detected"]
    assert found["hypervisor"]["pdb"] == "hvix64.pdb"
    assert int(found["hypervisor"]["base"], 16) == hv["hypervisor"]["base"]
    assert found["cpus_in_hypervisor_context"] == list(hv["hv_cpus"])
    assert any("Hyper-V detected" in w for w in result["warnings"])


def test_nt_found_despite_hypervisor_notes(converted):
    guest, out, _result = converted
    t = guest.truth
    p = kdmp_parser.KernelDumpParser(out)
    h = p.header
    assert h.MinorVersion == t["build"] and h.NumberProcessors == t["cpus"]
    assert h.DirectoryTableBase in (t["hyperv"]["nt_dtb"], t["processes"][0]["dtb"])
    assert h.DirectoryTableBase != t["hyperv"]["hypervisor"]["cr3"]
    assert h.KdDebuggerDataBlock == t["kdbg"]["va"]
    assert h.BugCheckCode == t["bugcheck"]["code"]
    block = dump_read_va(p, h.KdDebuggerDataBlock, 0x20, h.DirectoryTableBase)
    assert block[0x10:0x14] == b"KDBG" and struct.unpack_from("<Q", block, 0x18)[0] == t["kernel"]["base"]
    assert first_module_name(p).lower() == "ntoskrnl.exe"


def test_contexts_never_hold_hypervisor_registers(converted):
    guest, out, result = converted
    t = guest.truth
    hv = t["hyperv"]
    p = kdmp_parser.KernelDumpParser(out)
    sources = {c["number"]: c["registers_from"] for c in result["windows"]["processors"]}
    for cpu in t["processors"]:
        i = cpu["index"]
        ctx = dump_read_va(p, cpu["context_va"], 0x4D0, p.header.DirectoryTableBase)
        rip, rsp, rax = (struct.unpack_from("<Q", ctx, off)[0] for off in (0xF8, 0x98, 0x78))
        note = hv["note_registers"][i]
        if i in hv["hv_cpus"]:
            want = hv["nt_contexts"][i]["registers"]
            assert "ProcessorState" in sources[i]
            assert (rip, rsp, rax) == (want["rip"], want["rsp"], want["rax"])
            assert rip != note["registers"]["rip"]  # not the hypervisor's RIP
        else:
            assert sources[i] == "qemu-note"
            assert (rip, rsp, rax) == (note["registers"]["rip"], note["registers"]["rsp"], note["registers"]["rax"])
        assert struct.unpack_from("<H", ctx, 0x38)[0] == 0x10


def test_info_sound(converted):
    _guest, out, _result = converted
    proc = run_wincrash("info", out)
    assert proc.returncode == 0, proc.stdout[-500:]
