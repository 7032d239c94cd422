"""Which Windows this is: NtBuildLab, KdVersionBlock (DBGKD_GET_VERSION64), NtBuildNumber, KUSER_SHARED_DATA.

The build number is taken from the first source that gives one, in this order: the NtBuildLab
string the KDBG points at ("19041.1.amd64fre..."), the KdVersionBlock found in ntoskrnl's data
(MinorVersion), the NtBuildNumber export, and last KUSER_SHARED_DATA.NtBuildNumber (Windows 10+).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wincrash.formats.kdbg import DBGKD_MAJOR_FREE_BUILD, IMAGE_FILE_MACHINE_AMD64
from wincrash.windows.kdbg import KdbgBlock
from wincrash.windows.kernel import KernelView
from wincrash.windows.paging import KUSER_SHARED_DATA_VA

# KUSER_SHARED_DATA offsets: the same on every x64 build (checked against the ISF tables, windows/offsets.py).
KUSER_SIZE_READ = 0x2D8
KUSER_INTERRUPT_TIME = 0x8  # KSYSTEM_TIME: LowPart u32, High1Time i32
KUSER_SYSTEM_TIME = 0x14  # KSYSTEM_TIME
KUSER_NT_BUILD_NUMBER = 0x260  # Windows 10+
KUSER_NT_PRODUCT_TYPE = 0x264
KUSER_NT_MAJOR_VERSION = 0x26C  # then NtMinorVersion at 0x270
KUSER_SUITE_MASK = 0x2D0
NT_BUILD_LAB_READ = 128  # bytes read at NtBuildLab


@dataclass(frozen=True)
class KernelVersion:
    """Build and debugger version as the kernel states them.

    ``build``: 0 when no source gave one. ``major_version``: DBGKD MajorVersion (0xF free build).
    ``kd_secondary_version``: DBGKD KdSecondaryVersion (AMD64 CONTEXT revision). ``methods``: ordered
    (fact, how it was found) pairs; ``warnings``: disagreements between sources.
    """

    build: int = 0
    major_version: int = DBGKD_MAJOR_FREE_BUILD
    kd_secondary_version: int = 0
    nt_build_lab: str | None = None
    methods: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class KuserData:
    """KUSER_SHARED_DATA's clock and product fields.

    Times are 100 ns units: ``system_time`` a FILETIME (since 1601-01-01 UTC), ``interrupt_time`` the
    time since boot. ``product_type``: NT_PRODUCT_TYPE (1 workstation, 2 domain controller, 3 server).
    ``nt_build_number``: 0 before Windows 10 (the field did not exist).
    """

    system_time: int
    interrupt_time: int
    product_type: int
    nt_major: int
    nt_minor: int
    suite_mask: int
    nt_build_number: int


def read_version(kernel: KernelView, kdbg: KdbgBlock) -> KernelVersion:
    """The build from NtBuildLab, KdVersionBlock or the NtBuildNumber export (in that order), never raising."""
    space, image = kernel.space, kernel.image
    methods: dict[str, str] = {}
    warnings: list[str] = []
    build, nt_build_lab = 0, None
    major, secondary = DBGKD_MAJOR_FREE_BUILD, 0
    lab = space.read(kdbg.nt_build_lab, NT_BUILD_LAB_READ)
    if lab:
        nt_build_lab = lab.split(b"\0", 1)[0].decode("latin-1")
        head = nt_build_lab.split(".", 1)[0]
        if head.isdigit():
            build = int(head)
            methods["build"] = "NtBuildLab"
    found = find_kd_version_block(kernel)
    if found is not None:
        (major, minor, secondary), where = found
        methods["kd_version_block"] = where
        if not build:
            build = minor
            methods["build"] = "KdVersionBlock"
        elif minor != build:
            warnings.append(f"KdVersionBlock says build {minor}, NtBuildLab says {build}")
    if not build and "NtBuildNumber" in image.exports:
        value = space.read_u64(image.base + image.exports["NtBuildNumber"])
        if value:
            build = value & 0xFFFF
            methods["build"] = "NtBuildNumber export"
    return KernelVersion(build, major, secondary, nt_build_lab, tuple(methods.items()), tuple(warnings))


def find_kd_version_block(kernel: KernelView) -> tuple[tuple[int, int, int], str] | None:
    """((MajorVersion, MinorVersion = build, KdSecondaryVersion), "in section X") of DBGKD_GET_VERSION64.

    Found in ntoskrnl's writable sections as a qword-aligned block whose KernBase (+0x10) is the
    image base, MajorVersion 0xF, MachineType AMD64 and a plausible build; None when there is none.
    """
    image = kernel.image
    needle = image.base.to_bytes(8, "little")
    for section in (s for s in image.sections if s.writable_data):
        data = kernel.read_image_range(image.base + section.rva, section.size)
        pos = data.find(needle)
        while pos != -1:
            start = pos - 0x10
            if start >= 0 and start % 8 == 0:
                major, minor, _proto, _kdsec, _flags, machine = struct.unpack_from("<HHBBHH", data, start)
                if major == DBGKD_MAJOR_FREE_BUILD and machine == IMAGE_FILE_MACHINE_AMD64 and 2000 < minor < 60000:
                    return (major, minor, data[start + 5]), f"in section {section.name}"
            pos = data.find(needle, pos + 1)
    return None


def read_kuser(kernel: KernelView) -> KuserData | None:
    """KUSER_SHARED_DATA at its fixed address 0xFFFFF78000000000; None when it is not readable."""
    data = kernel.space.read(KUSER_SHARED_DATA_VA, KUSER_SIZE_READ)
    if data is None:
        return None
    low, high1 = struct.unpack_from("<Ii", data, KUSER_SYSTEM_TIME)
    system_time = (high1 << 32 | low) & ((1 << 64) - 1)
    low, high1 = struct.unpack_from("<Ii", data, KUSER_INTERRUPT_TIME)
    interrupt_time = (high1 << 32 | low) & ((1 << 64) - 1)
    nt_major, nt_minor = struct.unpack_from("<II", data, KUSER_NT_MAJOR_VERSION)
    number = struct.unpack_from("<I", data, KUSER_NT_BUILD_NUMBER)[0] & 0xFFFF if nt_major >= 10 else 0
    return KuserData(system_time, interrupt_time, struct.unpack_from("<I", data, KUSER_NT_PRODUCT_TYPE)[0], nt_major,
                     nt_minor, struct.unpack_from("<I", data, KUSER_SUITE_MASK)[0], number)
