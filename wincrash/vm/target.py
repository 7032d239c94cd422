"""Which VM the user means: a QMP UNIX socket, a QMP TCP address, or a libvirt domain.

Support engineers paste whatever they have at hand (a socket path from the QEMU command line,
``tcp:host:port`` from a lab setup, or a domain name from ``virsh list``). We decide the kind once,
here, so that every command accepts the same spellings and reports the same mistakes.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wincrash.vm.errors import NotQmpError, VmError, VmUnreachableError

DEFAULT_LIBVIRT_URI = "qemu:///system"

TargetKind = Literal["unix", "tcp", "libvirt"]

# libvirt domain names may hold almost anything but '/', and we treat '/' as "a path" anyway.
_TCP_RE = re.compile(r"^tcp:(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)$")


@dataclass(frozen=True)
class Target:
    """A resolved VM argument. Exactly one of (path), (host, port) or (domain, uri) is set."""

    kind: TargetKind
    path: Path | None = None
    host: str | None = None
    port: int | None = None
    domain: str | None = None
    uri: str | None = None

    def describe(self) -> str:
        """How to name this VM in messages: the socket path, ``tcp:HOST:PORT`` or ``libvirt domain 'NAME' (URI)``."""
        if self.kind == "unix":
            return str(self.path)
        if self.kind == "tcp":
            return f"tcp:{self.host}:{self.port}"
        return f"libvirt domain {self.domain!r} ({self.uri})"

    def qmp_address(self) -> str | tuple[str, int]:
        """The address in the form qemu.qmp's ``connect()`` takes: a path string or ``(host, port)``.

        :raises NotQmpError: for a libvirt domain (libvirt owns its monitor).
        """
        if self.kind == "unix":
            return str(self.path)
        if self.kind == "tcp":
            assert self.host is not None and self.port is not None
            return (self.host, self.port)
        raise NotQmpError(f"{self.describe()}: libvirt domains are reached through libvirt, not QMP directly")

    def to_dict(self) -> dict[str, object]:
        """JSON form, for --json results."""
        data: dict[str, object] = {"kind": self.kind, "name": self.describe()}
        if self.path is not None:
            data["path"] = str(self.path)
        if self.host is not None:
            data.update(host=self.host, port=self.port)
        if self.domain is not None:
            data.update(domain=self.domain, uri=self.uri)
        return data


def _looks_like_path(vm: str) -> bool:
    return "/" in vm or vm.startswith(".") or vm.startswith("unix:") or Path(vm).exists()


def parse_target(vm: str, connect: str | None = None) -> Target:
    """Turn the VM argument (and --connect) into a Target, or fail with one clear line.

    ``vm`` is a QMP UNIX socket path (optionally ``unix:PATH``), ``tcp:HOST:PORT`` (IPv6 host in
    brackets) or anything else, which is a libvirt domain name at ``connect`` (default
    ``qemu:///system``). The path case checks what is at the path now, because "no such socket" and
    "that is a regular file" are the two mistakes people make most (a typo, or the disk image instead
    of the socket). Nothing is opened.

    :raises VmError: empty argument, malformed ``tcp:``, port out of range, ``--connect`` with a non-domain.
    :raises VmUnreachableError: nothing at the path, or the path cannot be examined.
    :raises NotQmpError: the path is a regular file, a directory or another non-socket.
    """
    vm = vm.strip()
    if not vm:
        raise VmError("empty VM argument: give a QMP socket path, tcp:HOST:PORT or a libvirt domain name")
    m = _TCP_RE.match(vm)
    if m:
        if connect:
            raise VmError("--connect only applies to libvirt domain names, not to tcp:HOST:PORT")
        port = int(m["port"])
        if not 0 < port < 65536:
            raise VmError(f"{vm}: port {port} is out of range")
        return Target(kind="tcp", host=m["host"].strip("[]"), port=port)
    if vm.startswith("tcp:"):
        raise VmError(f"{vm}: expected tcp:HOST:PORT")
    if _looks_like_path(vm):
        if connect:
            raise VmError("--connect only applies to libvirt domain names, not to socket paths")
        path = Path(vm.removeprefix("unix:")).expanduser()
        try:
            st = path.stat()
        except FileNotFoundError:
            raise VmUnreachableError(
                f"{path}: no such socket (start QEMU with -qmp unix:{path},server=on,wait=off)"
            ) from None
        except OSError as exc:
            raise VmUnreachableError(f"{path}: cannot reach the socket: {(exc.strerror or str(exc)).lower()}") from None
        if not stat.S_ISSOCK(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "a regular file" if stat.S_ISREG(st.st_mode) \
                else "not a socket"
            raise NotQmpError(f"{path}: is {what}, not a QMP socket" if what != "not a socket"
                                else f"{path}: not a socket")
        return Target(kind="unix", path=path.absolute())
    return Target(kind="libvirt", domain=vm, uri=connect or DEFAULT_LIBVIRT_URI)
