"""Header fidelity of converted dumps: processor count and contexts, read back with kdmp-parser.

Each test patches a generated guest the way a real one differs from the tidy default (memory after
KiProcessorBlock not zero, vCPUs in reset state, no vCPU notes at all) and checks the dump against the
generator's truth; each would have caught the defect it names (issue 10, defect 2).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import kdmp_parser
import pytest
from helpers import dump_read_va, run_wincrash, u64
from wincrash_testkit.synth.cpu import CpuState, Segment
from wincrash_testkit.synth.guest import GuestSpec, generate
from wincrash_testkit.synth.writers import write_qemu_elf, write_raw

PAGE = 0x1000
LARGE = 0x200000
CS_OFFSET, RIP_OFFSET, RSP_OFFSET, RAX_OFFSET = 0x38, 0xF8, 0x98, 0x78


def kernel_pa(guest, va: int) -> int:  # noqa: ANN001
    """Physical address of a variable inside ntoskrnl (mapped by 2 MiB pages, truth["kernel"])."""
    k = guest.truth["kernel"]
    rva = va - k["base"]
    return k["large_page_pas"][rva // LARGE] + rva % LARGE


def reset_state(index: int) -> CpuState:
    """A vCPU right after RESET/INIT (an AP waiting for SIPI): real mode, CS F000:FFF0, CR0 0x60000010."""
    flat = Segment(0, 0xFFFF, 0x9300, 0)
    segments = {name: flat for name in ("ds", "es", "fs", "gs", "ss")}
    segments.update(cs=Segment(0xF000, 0xFFFF, 0x9B00, 0xFFFF0000), ldt=Segment(0, 0xFFFF, 0x8200, 0),
                    tr=Segment(0, 0xFFFF, 0x8B00, 0), gdt=Segment(0, 0xFFFF, 0, 0), idt=Segment(0, 0xFFFF, 0, 0))
    regs = {name: 0 for name in ("rax", "rbx", "rcx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
                                 "r13", "r14", "r15")}
    regs.update(rdx=0x600, rip=0xFFF0, rflags=2)
    return CpuState(index=index, regs=regs, segments=segments, cr=[0x60000010, 0, 0, 0, 0])


def write(guest, path: Path, writer=write_qemu_elf) -> Path:  # noqa: ANN001
    with open(path, "wb") as fh:
        writer(fh, guest)
    return path


def convert(path: Path, out: Path, *extra: str) -> dict:
    proc = run_wincrash("convert", path, "-o", out, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("garbage", ["kprcb0", "random"])
def test_memory_after_ki_processor_block_is_not_a_processor(tmp_path, garbage):
    guest = generate(GuestSpec(build=19041, cpus=4, ram_mib=512, seed=21, crashed=True, save_contexts=True))
    t = guest.truth
    kprcbs = [c["kprcb"] for c in t["processors"]]
    after = kernel_pa(guest, t["ki_processor_block"] + 8 * len(kprcbs))
    value = kprcbs[0] if garbage == "kprcb0" else 0xFFFFA48C1D2E3F40
    guest.mem.write(after, struct.pack("<QQ", value, value + 0x1000))
    out = tmp_path / "m.dmp"
    data = convert(write(guest, tmp_path / "g.elf"), out)
    assert kdmp_parser.KernelDumpParser(out).header.NumberProcessors == 4
    assert len(data["windows"]["processors"]) == 4
    method = data["windows"]["methods"]["cpus"]
    assert "4 validated KiProcessorBlock entries" in method and "entry 4" in method, method


def test_ke_number_processors_wins_when_smaller(tmp_path):
    guest = generate(GuestSpec(build=17763, cpus=4, ram_mib=512, seed=22, crashed=False))
    guest.mem.write(kernel_pa(guest, guest.truth["kernel"]["exports"]["KeNumberProcessors"]), struct.pack("<I", 3))
    out = tmp_path / "m.dmp"
    data = convert(write(guest, tmp_path / "g.elf"), out)
    assert kdmp_parser.KernelDumpParser(out).header.NumberProcessors == 3
    assert "KeNumberProcessors (3)" in data["windows"]["methods"]["cpus"]
    assert any("KeNumberProcessors says 3" in w for w in data["warnings"]), data["warnings"]
    assert any("4 vCPU notes but 3 processors" in w for w in data["warnings"]), data["warnings"]


def _assert_saved_contexts(guest, out: Path) -> None:  # noqa: ANN001
    """Every processor's CONTEXT and the header's hold the registers Windows saved in its KPRCB."""
    p = kdmp_parser.KernelDumpParser(out)
    saved = {c["index"]: c["registers"] for c in guest.truth["saved_contexts"]}
    assert len(saved) == guest.spec.cpus
    for cpu in guest.truth["processors"]:
        ctx = dump_read_va(p, cpu["context_va"], 0x4D0, p.header.DirectoryTableBase)
        want = saved[cpu["index"]]
        assert (u64(ctx, RIP_OFFSET), u64(ctx, RSP_OFFSET), u64(ctx, RAX_OFFSET)) == \
            (want["rip"], want["rsp"], want["rax"])
        assert struct.unpack_from("<H", ctx, CS_OFFSET)[0] == 0x10
    assert p.context.SegCs == 0x10 and p.context.Rip == saved[0]["rip"] and p.context.Rsp == saved[0]["rsp"]


def test_reset_state_notes_never_become_contexts(tmp_path):
    """APs waiting for SIPI (or a rebooting guest): their notes are not Windows', KPRCB.ProcessorState is."""
    guest = generate(GuestSpec(build=19041, cpus=4, ram_mib=512, seed=23, crashed=True, save_contexts=True))
    guest.cpus[1:] = [reset_state(i) for i in range(1, 4)]
    out = tmp_path / "m.dmp"
    data = convert(write(guest, tmp_path / "g.elf"), out)
    sources = {c["number"]: c["registers_from"] for c in data["windows"]["processors"]}
    assert sources[0] == "qemu-note" and all("ProcessorState" in sources[i] for i in (1, 2, 3)), sources
    assert any("not in long mode" in w for w in data["warnings"]), data["warnings"]
    _assert_saved_contexts(guest, out)


def test_all_vcpus_reset_still_gives_windows_contexts(tmp_path):
    guest = generate(GuestSpec(build=14393, cpus=2, ram_mib=512, seed=24, crashed=True, save_contexts=True))
    guest.cpus[:] = [reset_state(i) for i in range(2)]
    out = tmp_path / "m.dmp"
    convert(write(guest, tmp_path / "g.elf"), out)
    _assert_saved_contexts(guest, out)


def test_raw_image_of_crashed_guest_has_a_header_context(tmp_path):
    """No vCPU notes at all: the header context is CPU 0's saved one, never zeros."""
    guest = generate(GuestSpec(build=19041, cpus=2, ram_mib=512, seed=25, crashed=True, save_contexts=True))
    out = tmp_path / "m.dmp"
    convert(write(guest, tmp_path / "g.raw", write_raw), out)
    _assert_saved_contexts(guest, out)
    assert out.read_bytes()[0x348:0x348 + 0x4D0] != bytes(0x4D0)


def test_raw_image_of_live_guest_gets_kernel_selectors(tmp_path):
    """Nothing saved registers (a live guest, no notes): a Windows context with kernel selectors, said so."""
    guest = generate(GuestSpec(build=19041, cpus=2, ram_mib=512, seed=26, crashed=False))
    out = tmp_path / "m.dmp"
    data = convert(write(guest, tmp_path / "g.raw", write_raw), out)
    p = kdmp_parser.KernelDumpParser(out)
    assert p.context.SegCs == 0x10 and p.context.SegSs == 0x18
    assert any("header context holds only kernel selectors" in w for w in data["warnings"]), data["warnings"]
    assert run_wincrash("info", out).returncode == 0
