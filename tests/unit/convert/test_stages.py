"""The convert pipeline's stages one by one, on generated guests, against the generator's ground truth.

find_kernel -> find_kdbg -> read_facts (windows/), plan_dump -> write_dump (dmp/): each stage returns
frozen values and changes nothing it is given. Expected values come from the generator's truth.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import kdmp_parser
import pytest
from wincrash_testkit.synth.guest import GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf, write_raw

from wincrash.dmp.plan import REGISTERS_FROM_SAVED, merge_runs, plan_dump
from wincrash.dmp.writer import write_dump
from wincrash.errors import WincrashError
from wincrash.memory.source import open_source
from wincrash.windows.facts import read_facts
from wincrash.windows.kdbg import find_kdbg
from wincrash.windows.kernel import find_kernel
from wincrash.windows.locate import locate_windows
from wincrash.windows.vcpus import REGISTERS_FROM_NOTE, classify_vcpus


def _guest(tmp: Path, name: str, writer=write_qemu_elf, **spec):  # noqa: ANN001, ANN202
    guest = generate(GuestSpec(ram_mib=512, **spec))
    path = tmp / name
    with open(path, "wb") as fh:
        writer(fh, guest)
    return guest, path


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Windows 7 (plain KDBG), 2 vCPUs, crashed."""
    return _guest(tmp_path_factory.mktemp("st"), "w7.elf", build=7601, cpus=2, seed=11, crashed=True)


@pytest.fixture(scope="module")
def hyperv(tmp_path_factory):
    """Windows 10 under Hyper-V, vCPU notes 0 and 2 taken inside the hypervisor."""
    return _guest(tmp_path_factory.mktemp("st"), "hv.elf", build=19041, cpus=3, seed=12, hyperv=True, hv_cpus=(0, 2))


def test_find_kernel_and_kdbg(plain, hyperv):
    for guest, path in (plain, hyperv):
        t = guest.truth
        source = open_source(path)
        with source.fh:
            kernel = find_kernel(source)
            assert kernel.dtb == kernel.space.dtb == (t["hyperv"]["nt_dtb"] if "hyperv" in t else t["dtb"])
            assert kernel.image.base == t["kernel"]["base"] and kernel.image.pdb_name == "ntkrnlmp.pdb"
            assert kernel.dtb_method.startswith("CR3 of vCPU")
            with pytest.raises(dataclasses.FrozenInstanceError):
                kernel.dtb = 0  # type: ignore[misc]
            kdbg = find_kdbg(kernel)
            assert (kdbg.va, kdbg.pa, kdbg.encoded) == (t["kdbg"]["va"], t["kdbg"]["pa"], t["kdbg"]["encoded"])
            assert kdbg.plain.hex() == t["kdbg"]["plain_hex"]
            assert kdbg.ki_processor_block == t["ki_processor_block"]
            assert kdbg.ps_loaded_module_list == t["ps_loaded_module_list"]
            assert kdbg.ps_active_process_head == t["ps_active_process_head"]
            assert kdbg.mm_pfn_database == t["mm_pfn_database"]["va"]
            assert kdbg.ki_bugcheck_data == t["bugcheck"]["va"]


def test_classify_vcpus_separates_hypervisor_notes(hyperv):
    guest, path = hyperv
    t = guest.truth
    source = open_source(path)
    with source.fh:
        classes = classify_vcpus(source, [p["kprcb"] for p in t["processors"]])
    assert classes.in_hypervisor == (0, 2)
    assert dict(classes.nt_note_for) == {1: 1}
    assert classes.hypervisor is not None and classes.hypervisor.base == t["hyperv"]["hypervisor"]["base"]


def test_read_facts_matches_truth(plain):
    guest, path = plain
    t = guest.truth
    source = open_source(path)
    with source.fh:
        kernel = find_kernel(source)
        facts = read_facts(source, kernel, find_kdbg(kernel))
    assert facts.build == t["build"] and facts.crashed
    assert (facts.bugcheck_code, list(facts.bugcheck_parameters)) == (t["bugcheck"]["code"], t["bugcheck"]["params"])
    assert [list(r) for r in facts.runs] == t["windows_runs"]
    assert facts.system_dtb == t["processes"][0]["dtb"]
    assert facts.system_time == t["kuser_shared_data"]["system_time"]
    assert [(c.number, c.kprcb, c.context_va, c.note_index) for c in facts.cpus] == \
        [(p["index"], p["kprcb"], p["context_va"], p["index"]) for p in t["processors"]]
    assert list(facts.methods)[:3] == ["directory_table_base", "kernel", "kdbg"]
    with pytest.raises(TypeError):
        facts.methods["build"] = "x"  # type: ignore[index]


def test_plan_is_pure_and_writer_changes_nothing(hyperv, tmp_path):
    guest, path = hyperv
    t = guest.truth
    source = open_source(path)
    with source.fh:
        facts = locate_windows(source)
        before = facts.to_dict()
        plan = plan_dump(facts, source)
        assert plan_dump(facts, source) == plan
        assert facts.to_dict() == before
        assert dict(plan.register_sources) == {0: REGISTERS_FROM_SAVED, 1: REGISTERS_FROM_NOTE, 2: REGISTERS_FROM_SAVED}
        assert facts.to_dict(plan.register_sources)["processors"][0]["registers_from"] == REGISTERS_FROM_SAVED
        assert plan.header.kd_debugger_data_block == t["kdbg"]["va"]
        assert plan.header.number_processors == 3
        assert plan.bugcheck.startswith("0x00000161")
        assert (t["kdbg"]["pa"], bytes.fromhex(t["kdbg"]["plain_hex"])[:0x1000 - t["kdbg"]["pa"] % 0x1000]) \
            in plan.patches
        header = plan.header
        out = tmp_path / "bitmap.dmp"
        with open(out, "wb") as fh:
            written = write_dump(source, plan, "bitmap", fh, lambda n: None)
    assert plan.header is header and plan.header.dump_type == 1 and plan.header.required_dump_space == 0
    assert written.file_size == out.stat().st_size and not written.patches_lost
    parser = kdmp_parser.KernelDumpParser(out)  # keep the parser alive while its header is read
    h = parser.header
    assert h.DumpType.value == 5 and h.RequiredDumpSpace == written.file_size


def test_merge_runs_closes_smallest_gaps():
    runs = [(0, 1), (2, 1), (10, 1), (11, 1), (100, 1)]
    assert merge_runs(runs, 3) == [(0, 3), (10, 2), (100, 1)]
    assert runs == [(0, 1), (2, 1), (10, 1), (11, 1), (100, 1)]


def test_errors_say_what_was_tried(plain, tmp_path):
    zero = tmp_path / "zero.raw"
    zero.write_bytes(bytes(1 << 20))
    source = open_source(zero)
    with source.fh, pytest.raises(WincrashError, match="no Windows kernel found: no vCPU notes in the input"):
        find_kernel(source)
    _guest_, path = plain
    source = open_source(path)
    with source.fh:
        kernel = find_kernel(source)
        blind = dataclasses.replace(kernel, image=dataclasses.replace(kernel.image, sections=()))
        with pytest.raises(WincrashError, match=r"no Windows kernel debugger data \(KDBG\) found: .*ntoskrnl found at"):
            find_kdbg(blind)


def test_raw_image_found_by_pml4_scan(tmp_path):
    guest, path = _guest(tmp_path, "w10.raw", writer=write_raw, build=19041, cpus=2, seed=13)
    source = open_source(path)
    with source.fh:
        kernel = find_kernel(source)
    assert kernel.dtb_method == "scan for a self-referencing PML4"
    assert kernel.image.base == guest.truth["kernel"]["base"]
    assert "no vCPU notes in the input (raw image)" in kernel.tried
