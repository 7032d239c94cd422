"""`convert` and `info` on every memory file a support engineer holds, each written by the real tool.

One real QEMU 7.2 (TCG) run of the synthetic Windows gives: dump-guest-memory ELF (the reference),
format=kdump-zlib (makedumpfile's flattened form), `makedumpfile -R` of it (the plain 'KDUMP   '
form), paging=true ELF, and a migration stream; the compressed forms come from the real gzip, bzip2,
xz, zstd and lzop tools, the libvirt header from libvirt's layout, LiME from the ELF's RAM blocks.
Every conversion is checked with kdmp-parser against the truth of the synthetic guest and, page by
page, against the conversion of the ELF. The handed cases of ../shared/samples/cases are tests too.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time
from pathlib import Path

import kdmp_parser
import pytest
from helpers import run_wincrash, sample_file

BUILD, CPUS, RAM_MIB = 19041, 2, 256
COMPRESSORS = {"gzip": ["gzip", "-c"], "bzip2": ["bzip2", "-c"], "xz": ["xz", "-c", "-T1"],
               "zstd": ["zstd", "-c", "-q"],
               "lzop": ["lzop", "-c"]}


def check_dump(out: Path, truth: dict | None = None, cpus: int = CPUS) -> kdmp_parser.KernelDumpParser:
    """The DMP loads in kdmp-parser with the guest's build, CPUs and a decoded KDBG at the right place."""
    p = kdmp_parser.KernelDumpParser(out)
    h = p.header
    assert h.MinorVersion == BUILD and h.NumberProcessors == cpus
    kdbg = p.read_virtual_page(h.KdDebuggerDataBlock & ~0xFFF, h.DirectoryTableBase)
    off = h.KdDebuggerDataBlock & 0xFFF
    assert kdbg is not None and bytes(kdbg[off + 0x10:off + 0x14]) == b"KDBG"
    if truth:
        assert h.KdDebuggerDataBlock == truth["kdbg"]["va"]
        assert h.PsLoadedModuleList == truth["ps_loaded_module_list"]
        assert struct.unpack_from("<Q", bytes(kdbg), off + 0x18)[0] == truth["kernel"]["base"]
    return p


def convert(path: Path, out: Path, *extra: str) -> dict:
    proc = run_wincrash("convert", path, "-o", out, "--json", "--force", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def same_pages(a: kdmp_parser.KernelDumpParser, b: kdmp_parser.KernelDumpParser, pfns: list[int]) -> int:
    compared = 0
    for pfn in pfns:
        x, y = a.read_physical_page(pfn << 12), b.read_physical_page(pfn << 12)
        if y is None:
            continue
        # a bitmap dump leaves zero pages out: kdmp-parser then has no page where the reference has zeros
        assert bytes(x if x is not None else bytes(0x1000)) == bytes(y), f"page 0x{pfn:x} differs"
        compared += 1
    return compared


# --- the handed cases ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["libvirt-save-header/vm.libvirt-save", "virsh-compressed-stream/vm.libvirt-save-gzip",
                                  "virsh-compressed-stream/vm.virshdump-gzip", "kdump-flattened/vm.kdump-zlib"])
def test_handed_case_converts(case, tmp_path):
    path = sample_file(f"cases/{case}")
    result = convert(path, tmp_path / "x.dmp")
    assert result["windows"]["build"] == BUILD and len(result["windows"]["processors"]) == CPUS
    assert not any("ends early" in w or "truncated" in w for w in result["warnings"]), result["warnings"]
    if "kdump" in case:  # the vCPU registers come from the QEMU notes in the kdump note area
        assert result["windows"]["methods"]["directory_table_base"].startswith("CR3 of vCPU")
    check_dump(tmp_path / "x.dmp")


@pytest.mark.parametrize(("case", "kind", "words"), [
    ("libvirt-save-header/vm.libvirt-save", "libvirt-save", ["domain guest"]),
    ("virsh-compressed-stream/vm.libvirt-save-gzip", "libvirt-save", ["gzip-compressed"]),
    ("virsh-compressed-stream/vm.virshdump-gzip", "gzip-compressed", ["QEMU migration stream"]),
    ("kdump-flattened/vm.kdump-zlib", "kdump-flattened", ["flattened"]),
])
def test_handed_case_info(case, kind, words):
    proc = run_wincrash("info", sample_file(f"cases/{case}"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["kind"] == kind and all(w in report["title"] for w in words)
    if kind == "libvirt-save":
        assert report["domain"]["vcpus"] == CPUS and report["domain"]["memory_bytes"] == RAM_MIB << 20


# --- real producers -----------------------------------------------------------------------------------
def libvirt_header(xml: bytes, compressed: int) -> bytes:
    """virQEMUSaveHeader v2 (libvirt qemu_saveimage.h, 92 bytes) + the XML padded to 4 KiB, as virsh save writes it."""
    data = xml + b"\0" * (4096 - len(xml))
    return struct.pack("<16s5I14I", b"LibvirtQemudSave", 2, len(data), 1, compressed, 0, *[0] * 14) + data


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    for tool in ("qemu-system-x86_64", "as", "ld", "objcopy", "makedumpfile", *[c[0] for c in COMPRESSORS.values()]):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    from wincrash_testkit.testguest.memory import synth_memory
    from wincrash_testkit.testguest.vm import TestGuest

    work = Path(tmp_path_factory.mktemp("containers"))
    memory = synth_memory(build=BUILD, cpus=CPUS, ram_mib=RAM_MIB, seed=23)
    with TestGuest(work / "vm", memory=memory, ram_mib=RAM_MIB) as guest:
        guest.qmp("stop")
        guest.qmp("dump-guest-memory", {"paging": False, "protocol": f"file:{work / 'vm.elf'}"})
        guest.qmp("dump-guest-memory", {"paging": False, "format": "kdump-zlib",
                                        "protocol": f"file:{work / 'vm.kdump-flat'}"})
        guest.qmp("dump-guest-memory", {"paging": True, "protocol": f"file:{work / 'vm.paging.elf'}"})
        guest.qmp("migrate", {"uri": f"exec:cat > {work / 'vm.qevm'}"})
        deadline = time.monotonic() + 60
        while guest.qmp("query-migrate").get("status") not in ("completed", "failed"):  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "migration did not finish"
            time.sleep(0.1)
    with open(work / "vm.kdump-flat", "rb") as flat:
        subprocess.run(["makedumpfile", "-R", str(work / "vm.kdump-plain")], stdin=flat, check=True,
                       capture_output=True)
    for name, cmd in COMPRESSORS.items():
        with open(work / "vm.qevm", "rb") as src, open(work / f"vm.qevm.{name}", "wb") as dst:
            subprocess.run(cmd, stdin=src, stdout=dst, check=True)
    xml = b"<domain type='kvm'><name>testguest</name><uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>" \
          b"<memory unit='KiB'>262144</memory><vcpu>2</vcpu></domain>"
    (work / "vm.libvirt-save").write_bytes(libvirt_header(xml, 0) + (work / "vm.qevm").read_bytes())
    (work / "vm.libvirt-save-xz").write_bytes(libvirt_header(xml, 3) + (work / "vm.qevm.xz").read_bytes())
    (work / "vm.lime").write_bytes(lime_from_elf(work / "vm.elf"))
    reference = work / "ref.dmp"
    convert(work / "vm.elf", reference)
    return memory, work, kdmp_parser.KernelDumpParser(reference)


def lime_from_elf(elf: Path) -> bytes:
    """LiME ranges (lime_mem_range_header: magic, version 1, start, inclusive end, reserved) of the ELF's RAM."""
    from wincrash.memory.qemu_elf import read_elf_layout

    with open(elf, "rb") as fh:
        layout = read_elf_layout(fh, elf.stat().st_size)
        out = bytearray()
        for seg in layout.segments:
            fh.seek(seg.offset)
            out += struct.pack("<IIQQQ", 0x4C694D45, 1, seg.paddr, seg.paddr + seg.size - 1, 0) + fh.read(seg.size)
    return bytes(out)


INPUTS = ["vm.kdump-flat", "vm.kdump-plain", "vm.qevm.gzip", "vm.qevm.bzip2", "vm.qevm.xz", "vm.qevm.zstd",
          "vm.qevm.lzop", "vm.libvirt-save", "vm.libvirt-save-xz", "vm.lime"]


@pytest.mark.qemu
@pytest.mark.parametrize("name", INPUTS)
def test_real_input_converts_like_the_elf(produced, name, tmp_path):
    memory, work, reference = produced
    result = convert(work / name, tmp_path / "x.dmp", "--format", "bitmap" if name.endswith("lime") else "full")
    assert not any("truncated" in w or "ends early" in w for w in result["warnings"]), result["warnings"]
    p = check_dump(tmp_path / "x.dmp", memory.truth)
    if "kdump" in name:
        assert result["windows"]["methods"]["kernel"].startswith("IDT of vCPU")  # registers from the kdump notes
    assert same_pages(p, reference, sorted(memory.pages)[:4000] + list(range(0, RAM_MIB << 8, 61))) > 100


@pytest.mark.qemu
def test_kdump_pages_match_libkdumpfile(produced):
    """Our kdump reader and libkdumpfile (Debian python3-libkdumpfile) read the same bytes from the plain form."""
    kdumpfile = pytest.importorskip("kdumpfile", reason="python3-libkdumpfile is not installed")
    from wincrash.memory.source import open_source

    memory, work, _ = produced
    theirs = kdumpfile.kdumpfile(str(work / "vm.kdump-plain"))
    source = open_source(work / "vm.kdump-flat", work)
    with source.fh:
        assert len(source.cpus) == CPUS
        pfns = sorted(memory.pages)[:2000] + list(range(0, RAM_MIB << 8, 997))
        for pfn in pfns:
            assert source.read(pfn << 12, 0x1000) == bytes(theirs.read(kdumpfile.KDUMP_MACHPHYSADDR, pfn << 12,
                                                                       0x1000)), f"pfn 0x{pfn:x}"


@pytest.mark.qemu
def test_info_names_the_real_inputs(produced):
    _, work, _ = produced
    kinds = {"vm.kdump-flat": "kdump-flattened", "vm.kdump-plain": "kdump", "vm.qevm.xz": "xz-compressed",
             "vm.libvirt-save-xz": "libvirt-save", "vm.lime": "lime"}
    for name, kind in kinds.items():
        proc = run_wincrash("info", work / name, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["kind"] == kind
    report = json.loads(run_wincrash("info", work / "vm.libvirt-save", "--json").stdout)
    assert report["domain"] == {"name": "testguest", "uuid": "4dea22b3-1d52-d8f3-2516-782e98ab3fa0",
                                "memory_bytes": RAM_MIB << 20, "vcpus": CPUS}


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["vm.kdump-flat", "vm.qevm.gzip", "vm.lime"])
def test_truncated_input_names_what_is_missing(produced, name, tmp_path):
    _, work, _ = produced
    cut = tmp_path / name
    data = (work / name).read_bytes()
    cut.write_bytes(data[:len(data) * 9 // 10])
    proc = run_wincrash("convert", cut, "-o", tmp_path / "x.dmp", "--json")
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and "internal error" not in text, text
    if proc.returncode == 0:  # converted what is there, naming what is not
        warnings = json.loads(proc.stdout)["warnings"]
        assert any("truncated" in w or "ends early" in w for w in warnings), warnings
        check_dump(tmp_path / "x.dmp")
    else:  # what Windows needs lay in the missing part: the error says that first, in one line
        assert proc.stderr.startswith("wincrash: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "truncated" in proc.stderr.split("(")[0], proc.stderr


@pytest.mark.qemu
def test_paging_dump_uses_physical_addresses(produced, tmp_path):
    """dump-guest-memory paging=true: overlapping PT_LOADs are read by physical address, the gap is named."""
    memory, work, reference = produced
    result = convert(work / "vm.paging.elf", tmp_path / "x.dmp")
    assert any("paging=true" in w for w in result["warnings"]), result["warnings"]
    p = check_dump(tmp_path / "x.dmp", memory.truth)
    held = 0
    for pfn in sorted(memory.pages)[:4000]:  # what the paging dump holds is the guest's page, the rest zeros
        x, y = p.read_physical_page(pfn << 12), reference.read_physical_page(pfn << 12)
        if x is not None and y is not None and any(x):
            assert bytes(x) == bytes(y), f"page 0x{pfn:x} differs"
            held += 1
    assert held > 50


def _disk(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"disk.{kind}"
    if kind in ("qcow2", "vmdk", "vhdx", "vpc"):
        subprocess.run(["qemu-img", "create", "-q", "-f", kind, str(path), "64M"], check=True)
    elif kind in ("mbr", "gpt"):
        with open(path, "wb") as fh:
            fh.truncate(64 << 20)
        subprocess.run(["sfdisk", "-q", str(path)], input=f"label: {'dos' if kind == 'mbr' else 'gpt'}\n,,L\n",
                       text=True, check=True, capture_output=True)
    elif kind == "iso":
        (tmp_path / "iso").mkdir()
        (tmp_path / "iso" / "readme.txt").write_text("not memory\n")
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(path), str(tmp_path / "iso")], check=True,
                       capture_output=True)
    else:
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize(("kind", "words"), [
    ("qcow2", "qcow2 disk image"), ("vmdk", "VMDK disk image"), ("vhdx", "VHDX disk image"), ("vpc", "VHD disk image"),
    ("mbr", "MBR partition table"), ("gpt", "GPT partition table"), ("iso", "ISO 9660"), ("empty", "empty file"),
])
def test_not_memory_is_named_in_one_line(kind, words, tmp_path):
    tool = {"qcow2": "qemu-img", "vmdk": "qemu-img", "vhdx": "qemu-img", "vpc": "qemu-img", "mbr": "sfdisk",
            "gpt": "sfdisk", "iso": "xorriso"}.get(kind)
    if tool and shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    path = _disk(tmp_path, kind)
    for command in (["convert", path, "-o", tmp_path / "x.dmp"], ["info", path]):
        proc = run_wincrash(*command)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert words in proc.stderr and "raw image" not in proc.stderr, proc.stderr
        if kind not in ("iso", "empty"):
            assert "grab-pagefile" in proc.stderr
    assert not (tmp_path / "x.dmp").exists()
