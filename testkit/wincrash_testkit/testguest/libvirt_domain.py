"""The test guest as a transient libvirt domain (libvirt owns QEMU's command line there).

RAM content goes in as ``-device loader`` blobs through libvirt's qemu:commandline passthrough, the
firmware as the domain's ROM loader (``-bios``); ``<on_crash>preserve</on_crash>`` plus an ISA panic
device make a panic pause the domain, as on a production host configured for dumps.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import quoteattr

from wincrash_testkit.testguest.memory import GuestMemory, build_loader_blobs
from wincrash_testkit.testguest.stub import build_rom


def domain_xml(name: str, workdir: Path, memory: GuestMemory | None, ram_mib: int = 64) -> str:
    """Write the firmware and RAM blobs to ``workdir`` (world-readable: QEMU runs as libvirt-qemu)."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    loader = ""
    args: list[str] = []
    cpus = 1
    if memory is not None:
        cpus = len(memory.gs_bases)
        blobs, cfg = build_loader_blobs(memory, workdir, ram_mib << 20)
        rom = workdir / "stub.rom"
        rom.write_bytes(build_rom(cfg))
        for path in [rom, *(b for b, _ in blobs)]:
            os.chmod(path, 0o644)
        loader = f"<loader type='rom' readonly='yes'>{rom}</loader>"
        for blob, addr in blobs:
            args += ["-device", f"loader,file={blob},addr={addr:#x},force-raw=on"]
    cmdline = "".join(f"<qemu:arg value={quoteattr(a)}/>" for a in args)
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{ram_mib}</memory>
  <vcpu>{cpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{loader}</os>
  <cpu mode='custom'><model>qemu64</model></cpu>
  <on_crash>preserve</on_crash>
  <devices><panic model='isa'/></devices>
  <qemu:commandline>{cmdline}</qemu:commandline>
</domain>"""
