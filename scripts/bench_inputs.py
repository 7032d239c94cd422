"""Inputs for `bench_convert.py --by-input`: one generated guest written by the real tools in every form
`wincrash convert` reads (imported by bench_convert.py; not a command of its own).

The guest is wincrash_testkit's synthetic Windows (build 19041, 2 vCPUs) in a real QEMU (TCG) whose RAM
is the generated raw image (memory-backend-file, share=off), with random data in half of the 2 MiB
blocks the generator left free (chosen at random), the other half zero pages. From that one VM, stopped:
dump-guest-memory ELF and format=kdump-zlib (makedumpfile's flattened form; `makedumpfile -R` gives the
plain 'KDUMP   ' form), a migration stream (`migrate exec:cat`, what `virsh dump` writes), the gzip, xz
and zstd of that stream (the real tools), libvirt's save layout (92-byte virQEMUSaveHeader + domain XML
+ the stream, as libvirt 9.0 writes it) and LiME ranges of the ELF's RAM; raw = the RAM image written
densely.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import time
from pathlib import Path

from wincrash_testkit.testguest.memory import synth_memory
from wincrash_testkit.testguest.vm import TestGuest

from wincrash.memory.qemu_elf import read_elf_layout

BLOCK = 2 << 20
COMPRESSORS = {"gzip": ["gzip", "-c", "-1"], "xz": ["xz", "-c", "-0", "-T2"], "zstd": ["zstd", "-c", "-q", "-T2"]}


class _FilledGuest(TestGuest):
    """A TestGuest whose RAM file gets random data in free 2 MiB blocks before QEMU maps it."""

    def __init__(self, *args: object, fraction: float = 0.5, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.fraction = fraction
        self.random_bytes = 0

    def command(self) -> list[str]:
        cmd = super().command()  # writes ram.img
        rng = random.Random(5)
        noise = os.urandom(BLOCK * 8)
        zero = bytes(BLOCK)
        fd = os.open(self.workdir / "ram.img", os.O_RDWR)
        try:
            for block in range(1, self.ram_size // BLOCK):  # block 0: firmware, VGA hole
                if rng.random() >= self.fraction or os.pread(fd, BLOCK, block * BLOCK) != zero:
                    continue
                start = rng.randrange(0, 7) * BLOCK
                os.pwrite(fd, noise[start:start + BLOCK], block * BLOCK)
                self.random_bytes += BLOCK
        finally:
            os.close(fd)
        return cmd


def _lime_from_elf(elf: Path, out: Path) -> None:
    """LiME ranges (lime_mem_range_header: magic, version 1, start, inclusive end, reserved)."""
    with open(elf, "rb") as fh, open(out, "wb") as dst:
        for seg in read_elf_layout(fh, elf.stat().st_size).segments:
            dst.write(struct.pack("<IIQQQ", 0x4C694D45, 1, seg.paddr, seg.paddr + seg.size - 1, 0))
            fh.seek(seg.offset)
            left = seg.size
            while left:
                chunk = fh.read(min(left, 8 << 20))
                dst.write(chunk)
                left -= len(chunk)


def _libvirt_save(stream: Path, out: Path, ram_mib: int, cpus: int) -> None:
    xml = (f"<domain type='kvm'><name>bench</name><uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>"
           f"<memory unit='KiB'>{ram_mib << 10}</memory><vcpu>{cpus}</vcpu></domain>").encode()
    data = xml + b"\0" * (4096 - len(xml))
    with open(out, "wb") as dst, open(stream, "rb") as src:
        dst.write(struct.pack("<16s5I14I", b"LibvirtQemudSave", 2, len(data), 1, 0, 0, *[0] * 14) + data)
        while chunk := src.read(8 << 20):
            dst.write(chunk)


def _dump(guest: TestGuest, arguments: dict[str, object]) -> None:
    """dump-guest-memory in the background (a 1 GiB kdump-zlib takes longer than one QMP timeout)."""
    guest.qmp("dump-guest-memory", {"paging": False, "detach": True, **arguments})
    while guest.qmp("query-dump").get("status") == "active":  # type: ignore[union-attr]
        time.sleep(0.2)
    status = guest.qmp("query-dump").get("status")  # type: ignore[union-attr]
    if status != "completed":
        raise SystemExit(f"dump-guest-memory {arguments}: {status}")


def make_inputs(ram_mib: int, work: Path, cpus: int = 2) -> tuple[dict[str, Path], int]:
    """{input kind: path} of one guest of ``ram_mib`` MiB, and the MiB of random data in its RAM."""
    memory = synth_memory(build=19041, cpus=cpus, ram_mib=ram_mib, seed=ram_mib)
    files = {k: work / f"vm.{k}" for k in ("elf", "raw", "kdump-flat", "kdump-plain", "savevm", "libvirt-save",
                                          "lime", *(f"savevm.{c}" for c in COMPRESSORS))}
    with _FilledGuest(work / "vm", memory=memory, ram_mib=ram_mib) as guest:
        guest.qmp("stop")
        _dump(guest, {"protocol": f"file:{files['elf']}"})
        _dump(guest, {"format": "kdump-zlib", "protocol": f"file:{files['kdump-flat']}"})
        guest.qmp("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        guest.qmp("migrate", {"uri": f"exec:cat > {files['savevm']}"})
        deadline = time.monotonic() + 600
        while guest.qmp("query-migrate").get("status") not in ("completed", "failed"):  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise SystemExit("migration did not finish")
            time.sleep(0.2)
        subprocess.run(["cp", "--sparse=never", str(guest.workdir / "ram.img"), str(files["raw"])], check=True)
        random_mib = guest.random_bytes >> 20
    with open(files["kdump-flat"], "rb") as flat:
        subprocess.run(["makedumpfile", "-R", str(files["kdump-plain"])], stdin=flat, check=True, capture_output=True)
    for name, cmd in COMPRESSORS.items():
        with open(files["savevm"], "rb") as src, open(files[f"savevm.{name}"], "wb") as dst:
            subprocess.run(cmd, stdin=src, stdout=dst, check=True)
    _libvirt_save(files["savevm"], files["libvirt-save"], ram_mib, cpus)
    _lime_from_elf(files["elf"], files["lime"])
    return files, random_mib
