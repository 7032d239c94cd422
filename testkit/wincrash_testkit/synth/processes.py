"""The processes of a booted Windows: Idle, System and a realistic tree, each with its own address space.

What a real system has and independent readers rely on (MemProcFS gives up below 11 processes on
PsActiveProcessHead and takes the build from the PEB of smss.exe whose parent is 4; volatility3 lists them):
EPROCESS at the build's offsets with a PID, an image name, the parent's PID (processes whose parent has
exited keep its PID, like csrss.exe and wininit.exe whose smss.exe session instance is gone) and a PML4 of
its own. A process PML4 holds its self-reference, System's kernel-half entries (copied by
``share_kernel_half`` once the kernel's space is complete, as process creation copies them) and a user half
with the PEB, the image's header page and KUSER_SHARED_DATA's read-only view. System and Registry are
minimal processes: System's DTB is the kernel's, neither has a PEB.
"""

from __future__ import annotations

import struct

from wincrash_testkit.synth import pe
from wincrash_testkit.synth.paging import NX, RW, US, A, AddressSpace, D, P
from wincrash_testkit.synth.physmem import PAGE
from wincrash_testkit.synth.state import Builder

# _PEB offsets (bytes), the same in every x64 build imitated here (volatility3 ISF of each ntkrnlmp.pdb).
PEB_IMAGE_BASE, PEB_NUMBER_OF_PROCESSORS, PEB_OS_MAJOR, PEB_OS_MINOR = 0x10, 0xB8, 0x118, 0x11C
PEB_OS_BUILD, PEB_OS_PLATFORM, PEB_SESSION_ID = 0x120, 0x124, 0x2C0
USER_DATA = P | RW | US | A | D | NX
USER_IMAGE = P | US | A
VER_PLATFORM_WIN32_NT = 2
REGISTRY_FIRST_BUILD = 17134  # the Registry minimal process exists from Windows 10 1803

# (image name or None for a process that has exited, label, parent label, session): creation order.
TREE: tuple[tuple[str | None, str, str | None, int], ...] = (
    ("System", "system", None, 0),
    ("Registry", "registry", "system", 0),
    ("smss.exe", "smss", "system", 0),
    (None, "smss0", "smss", 0),
    ("csrss.exe", "csrss0", "smss0", 0),
    ("wininit.exe", "wininit", "smss0", 0),
    (None, "smss1", "smss", 1),
    ("csrss.exe", "csrss1", "smss1", 1),
    ("winlogon.exe", "winlogon", "smss1", 1),
    ("services.exe", "services", "wininit", 0),
    ("lsass.exe", "lsass", "wininit", 0),
    ("svchost.exe", "dcomlaunch", "services", 0),
    ("fontdrvhost.exe", "fontdrv0", "wininit", 0),
    ("fontdrvhost.exe", "fontdrv1", "winlogon", 1),
    ("svchost.exe", "rpcss", "services", 0),
    ("dwm.exe", "dwm", "winlogon", 1),
    ("svchost.exe", "netsvcs", "services", 0),
    ("svchost.exe", "localservice", "services", 0),
    ("spoolsv.exe", "spoolsv", "services", 0),
    ("svchost.exe", "*extra", "services", 0),  # 0..3 more service hosts
    ("sihost.exe", "sihost", "netsvcs", 1),
    ("taskhostw.exe", "taskhostw", "netsvcs", 1),
    (None, "userinit", "winlogon", 1),
    ("explorer.exe", "explorer", "userinit", 1),
)


def image_file_name(name: str) -> str:
    """EPROCESS.ImageFileName (UCHAR[15]) as Windows fills it: the first 14 characters and a NUL
    ("fontdrvhost.exe" reads "fontdrvhost.ex" in every reader, as on real dumps)."""
    return name[:14]


def _eprocess(b: Builder, name: str, pid: int, ppid: int, dtb: int, peb: int) -> int:
    o = b.wb.offsets
    ep = b.pool.alloc(b.wb.sizes["_EPROCESS"], 16)
    b.space.write_u64(ep + o["_KPROCESS.DirectoryTableBase"], dtb)
    b.space.write_u64(ep + o["_EPROCESS.UniqueProcessId"], pid)
    b.space.write_u64(ep + o["_EPROCESS.InheritedFromUniqueProcessId"], ppid)
    b.space.write_u64(ep + o["_EPROCESS.Peb"], peb)
    b.space.write(ep + o["_EPROCESS.ImageFileName"], image_file_name(name).encode() + b"\x00")
    return ep


def _user_space(b: Builder, session: int) -> tuple[AddressSpace, int]:
    """A process PML4 with its user half (image header page, PEB); returns (space, PEB address)."""
    rng, wb = b.rng, b.wb
    space = AddressSpace(b.mem, b.alloc, b.self_ref, self_ref_nx=b.spec.build >= 9600)
    image = 0x7FF600000000 + rng.randrange(0x10, 0x10000) * 0x10000
    peb = rng.randrange(0x100000, 0x7FFFFFF) * PAGE
    space.map_4k(image, b.alloc.page(), USER_IMAGE)
    header = pe.pe_headers(image_base=image, size_of_image=0x10 * PAGE,
                           sections=[pe.Section(".text", 0x1000, 0xF000, pe.TEXT)], entry_rva=0x1000,
                           timestamp=rng.randrange(0x50000000, 0x60000000), os_version=(wb.nt_major, wb.nt_minor))
    space.write(image, header)
    space.map_4k(peb, b.alloc.page(), USER_DATA)
    space.write_u64(peb + PEB_IMAGE_BASE, image)
    space.write_u32(peb + PEB_NUMBER_OF_PROCESSORS, b.spec.cpus)
    space.write(peb + PEB_OS_MAJOR, struct.pack("<IIHHI", wb.nt_major, wb.nt_minor, b.spec.build, 0,
                                                VER_PLATFORM_WIN32_NT))
    space.write_u32(peb + PEB_SESSION_ID, session)
    return space, peb


def processes(b: Builder) -> None:
    """Idle (not listed), System and the TREE's processes on PsActiveProcessHead, in creation order."""
    rng = b.rng
    b.process_spaces = []
    b.idle_process = _eprocess(b, "Idle", 0, 0, b.space.dtb, 0)
    pids: dict[str, int] = {"system": 4}
    pid = rng.randrange(0x14, 0x20) * 4
    listed = []
    rows = [row for row in TREE if row[1] != "registry" or b.spec.build >= REGISTRY_FIRST_BUILD]
    extra = rng.randint(0, 3)
    for name, label, parent, session in rows:
        for k in range(extra if label == "*extra" else 1):
            key = f"extra{k}" if label == "*extra" else label
            if key != "system":
                pid += rng.randrange(1, 0x30) * 4
                pids[key] = pid
            if name is None:
                continue
            ppid = pids[parent] if parent else 0
            if key == "system":
                dtb, peb = b.space.dtb, 0
            else:
                if key == "registry":  # a minimal process: an address space of its own, no PEB
                    space, peb = AddressSpace(b.mem, b.alloc, b.self_ref, self_ref_nx=b.spec.build >= 9600), 0
                else:
                    space, peb = _user_space(b, session)
                b.process_spaces.append(space)
                dtb = space.dtb
            ep = _eprocess(b, name, pids[key], ppid, dtb, peb)
            listed.append({"name": name, "image_file_name": image_file_name(name), "pid": pids[key], "ppid": ppid,
                           "eprocess": ep, "dtb": dtb, "peb": peb})
    b.system_process = listed[0]["eprocess"]
    o = b.wb.offsets
    b.link_list(b.sym("PsActiveProcessHead"), [p["eprocess"] + o["_EPROCESS.ActiveProcessLinks"] for p in listed])
    b.space.write_u64(b.sym("PsInitialSystemProcess"), b.system_process)
    b.truth["processes"] = listed


def share_kernel_half(b: Builder) -> None:
    """Give every process PML4 System's kernel-half entries (call once the kernel's mappings are all made)."""
    for space in b.process_spaces:
        space.share_kernel_half(b.space)
