"""Helpers for the capture tests: an independent little ELF/QEMU-note reader and fake sockets.

The ELF reader is deliberately separate from wincrash.memory.qemu_elf so that these tests check
QEMU's output against the documented layout, not against our own parser.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

QEMU_CPUSTATE_SIZE = 440
OFF_RAX, OFF_R15, OFF_RIP = 8, 8 + 15 * 8, 8 + 16 * 8
OFF_GS_BASE = 8 + 18 * 8 + 4 * 24 + 16  # segments cs ds es fs gs: gs is the 5th, base at +16
OFF_CR3 = 8 + 18 * 8 + 10 * 24 + 3 * 8


def read_qemu_elf(path: Path) -> tuple[list[dict[str, int]], list[tuple[int, int, int]]]:
    """(per-vCPU registers from the 'QEMU' notes, [(paddr, size, file offset)] of the PT_LOADs)."""
    with open(path, "rb") as fh:
        ehdr = fh.read(64)
        assert ehdr[:4] == b"\x7fELF" and ehdr[4] == 2, "not an ELF64 file"
        e_type, e_machine = struct.unpack_from("<HH", ehdr, 16)
        assert e_type == 4, "not a core file"
        phoff, = struct.unpack_from("<Q", ehdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
        fh.seek(phoff)
        phdrs = [struct.unpack("<IIQQQQQQ", fh.read(phentsize)[:56]) for _ in range(phnum)]
        cpus, loads = [], []
        for p_type, _flags, off, _vaddr, paddr, filesz, _memsz, _align in phdrs:
            if p_type == 1:
                loads.append((paddr, filesz, off))
            elif p_type == 4:
                fh.seek(off)
                notes = fh.read(filesz)
                pos = 0
                while pos + 12 <= len(notes):
                    namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
                    name = notes[pos + 12:pos + 12 + namesz]
                    desc_off = pos + 12 + (namesz + 3) // 4 * 4
                    desc = notes[desc_off:desc_off + descsz]
                    if name.rstrip(b"\0") == b"QEMU" and descsz == QEMU_CPUSTATE_SIZE:
                        cpus.append({
                            "version": struct.unpack_from("<I", desc, 0)[0],
                            "rax": struct.unpack_from("<Q", desc, OFF_RAX)[0],
                            "r15": struct.unpack_from("<Q", desc, OFF_R15)[0],
                            "rip": struct.unpack_from("<Q", desc, OFF_RIP)[0],
                            "gs_base": struct.unpack_from("<Q", desc, OFF_GS_BASE)[0],
                            "cr3": struct.unpack_from("<Q", desc, OFF_CR3)[0],
                        })
                    pos = desc_off + (descsz + 3) // 4 * 4
        return cpus, loads


def read_phys(path: Path, loads: list[tuple[int, int, int]], pa: int, size: int) -> bytes:
    for paddr, filesz, off in loads:
        if paddr <= pa and pa + size <= paddr + filesz:
            with open(path, "rb") as fh:
                fh.seek(off + pa - paddr)
                return fh.read(size)
    raise AssertionError(f"physical {pa:#x} is in no PT_LOAD")


class FakeServer:
    """A UNIX socket server that is not QMP: it sends ``greeting`` (or nothing) and keeps the line open."""

    def __init__(self, path: Path, greeting: bytes | None) -> None:
        self.path = path
        self.greeting = greeting
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.greeting is not None:
                conn.sendall(self.greeting)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_libvirt_booted(name: str, memory, timeout: float = 30) -> None:  # noqa: ANN001 - a GuestMemory
    """Wait until every vCPU of libvirt domain ``name`` (qemu:///system) runs the test guest's Windows: its
    CR3 is the guest's page-table root (QEMU's `info registers -a`); asserts within ``timeout`` seconds."""
    import time

    import libvirt
    import libvirt_qemu

    conn = libvirt.open("qemu:///system")
    dom = conn.lookupByName(name)
    deadline = time.monotonic() + timeout
    while True:
        regs = libvirt_qemu.qemuMonitorCommand(dom, "info registers -a",
                                               libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        if regs.count(f"CR3={memory.dtb:016x}") == len(memory.gs_bases):
            break
        assert time.monotonic() < deadline, regs
        time.sleep(0.1)
    conn.close()
