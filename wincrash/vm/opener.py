"""``open_vm``: the one place that turns a VM argument into an open connection, QMP or libvirt."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from wincrash.vm.connection import VmConnection
from wincrash.vm.libvirt_connection import LibvirtConnection
from wincrash.vm.qmp_connection import QmpConnection
from wincrash.vm.target import parse_target


@contextlib.asynccontextmanager
async def open_vm(vm: str, connect: str | None = None) -> AsyncIterator[VmConnection]:
    """Resolve ``vm`` (and ``--connect``) with ``parse_target``, connect, yield the connection, close it.

    A socket path or ``tcp:HOST:PORT`` gives a ``QmpConnection``, a domain name a ``LibvirtConnection``
    (libvirt's Python bindings are imported only then).

    :raises VmError: a malformed argument, or no libvirt bindings for a domain name.
    :raises VmUnreachableError: no socket / nobody listening / no such domain / libvirt unreachable.
    :raises NotQmpError: the socket does not speak QMP, or its monitor is busy.
    """
    target = parse_target(vm, connect)
    connection: VmConnection
    if target.kind == "libvirt":
        connection = await LibvirtConnection.open(target)
    else:
        connection = await QmpConnection.open(target)
    try:
        yield connection
    finally:
        await connection.close()
