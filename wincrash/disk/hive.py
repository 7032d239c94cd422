"""Small helpers over libguestfs' hivex calls (the registry hive is opened inside the appliance).

Only one hive can be open per handle; callers use `open_hive` as a context manager. Values are
decoded by type: REG_SZ / REG_EXPAND_SZ as text, REG_MULTI_SZ as a list, REG_DWORD / REG_QWORD as
int; anything else stays bytes.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from typing import Any

from wincrash.disk.guestfs_backend import guestfs_call
from wincrash.errors import WincrashError

REG_SZ = 1
REG_EXPAND_SZ = 2
REG_BINARY = 3
REG_DWORD = 4
REG_MULTI_SZ = 7
REG_QWORD = 11
TYPE_NAMES = {REG_SZ: "REG_SZ", REG_EXPAND_SZ: "REG_EXPAND_SZ", REG_BINARY: "REG_BINARY",
              REG_DWORD: "REG_DWORD", REG_MULTI_SZ: "REG_MULTI_SZ", REG_QWORD: "REG_QWORD"}


@contextlib.contextmanager
def open_hive(g: Any, path: str, write: bool = False) -> Iterator[int]:
    """Open the hive at ``path`` (guest path) and yield its root node; commit is the caller's job.

    Every libguestfs RuntimeError raised in the block (a truncated or damaged hive) becomes one
    WincrashError naming ``path``.
    """
    guestfs_call(f"{path}: cannot open the registry hive", g.hivex_open, path, write=write)
    try:
        yield guestfs_call(f"{path}: damaged registry hive", g.hivex_root)
    except RuntimeError as exc:  # hivex reads lazily: a truncated or damaged hive fails in any later call
        detail = str(exc).strip().splitlines()[0].removeprefix("libguestfs: error: ") if str(exc).strip() else ""
        raise WincrashError(f"{path}: damaged registry hive ({detail or exc.__class__.__name__}); nothing was "
                            "written") from None
    finally:
        with contextlib.suppress(RuntimeError):
            g.hivex_close()


def child(g: Any, node: int, *names: str) -> int | None:
    """Walk down by key names (case-insensitive, as Windows does); None when a key is missing."""
    for name in names:
        node = g.hivex_node_get_child(node, name)
        if not node:
            return None
    return node


def decode_value(vtype: int, raw: bytes) -> Any:
    """A registry value as a Python value."""
    if vtype in (REG_SZ, REG_EXPAND_SZ):
        return raw.decode("utf-16-le", "replace").split("\0", 1)[0]
    if vtype == REG_MULTI_SZ:
        return [s for s in raw.decode("utf-16-le", "replace").split("\0") if s]
    if vtype == REG_DWORD and len(raw) >= 4:
        return struct.unpack_from("<I", raw)[0]
    if vtype == REG_QWORD and len(raw) >= 8:
        return struct.unpack_from("<Q", raw)[0]
    return raw


def encode_value(vtype: int, value: Any) -> bytes:
    """The inverse of decode_value for the types we write."""
    if vtype in (REG_SZ, REG_EXPAND_SZ):
        return (str(value) + "\0").encode("utf-16-le")
    if vtype == REG_DWORD:
        return struct.pack("<I", int(value))
    if vtype == REG_MULTI_SZ:
        return ("".join(s + "\0" for s in value) + "\0").encode("utf-16-le")
    raise ValueError(f"cannot encode registry type {vtype}")


def get_value(g: Any, node: int, name: str) -> tuple[int, Any] | None:
    """(type, decoded value) of a value under ``node``, or None when it does not exist."""
    value = g.hivex_node_get_value(node, name)
    if not value:
        return None
    vtype = g.hivex_value_type(value)
    return vtype, decode_value(vtype, g.hivex_value_value(value))


def current_control_set(g: Any, root: int) -> str:
    """The control set Windows boots with (Select\\Current), e.g. 'ControlSet001'."""
    select = child(g, root, "Select")
    current = get_value(g, select, "Current") if select else None
    number = current[1] if current and isinstance(current[1], int) else 1
    return f"ControlSet{number:03d}"
