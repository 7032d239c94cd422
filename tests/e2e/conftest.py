"""Fixtures shared by the end-to-end suites: test-guest domains on the real libvirtd."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from wincrash_testkit.testguest.libvirt_domain import domain_xml
from wincrash_testkit.testguest.memory import GuestMemory, trivial_memory

_names = itertools.count()


@pytest.fixture
def libvirt_domain(libvirt_system) -> Iterator[Callable[..., tuple[str, GuestMemory]]]:  # noqa: ANN001
    """make(cpus, memory, ram_mib, persistent=False) -> (name, memory): a TCG domain running the test guest
    on the real libvirtd (qemu:///system); transient, or defined then started when ``persistent`` (what
    `virsh managedsave` needs). Destroyed, undefined and its managed-save image removed at teardown."""
    import libvirt

    conn = libvirt_system
    workdir = Path(tempfile.mkdtemp(prefix="wclv-"))
    os.chmod(workdir, 0o755)  # QEMU runs as libvirt-qemu and must reach the firmware and RAM blobs
    doms = []

    def make(cpus: int = 2, memory: GuestMemory | None = None, ram_mib: int = 64,
             persistent: bool = False) -> tuple[str, GuestMemory]:
        name = f"wincrash-test-{os.getpid()}-{next(_names)}"
        memory = memory or trivial_memory(cpus)
        xml = domain_xml(name, workdir / name, memory, ram_mib)
        if persistent:
            dom = conn.defineXML(xml)
            doms.append(dom)
            dom.create()
        else:
            doms.append(conn.createXML(xml, 0))
        return name, memory

    yield make
    for dom in doms:
        for step in (dom.destroy, lambda d=dom: d.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)):
            try:
                step()
            except libvirt.libvirtError:
                pass  # not running / transient: nothing to do
    shutil.rmtree(workdir, ignore_errors=True)
