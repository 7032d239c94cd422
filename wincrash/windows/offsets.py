"""The few structure offsets the converter needs without symbols, and the Windows x64 builds it can name.

Everything else about a kernel is read from the dump itself (KDBG Offset*/Size* fields, KUSER_SHARED_DATA).
Values are those of the real ntkrnlmp.pdb symbol tables (volatility3 ISF files, ../shared/samples/isf); the
test kit's full tables (wincrash_testkit.synth.symbols) hold the same values and tests/unit/testkit/test_offsets_isf.py
checks both against the ISF files. KPROCESS.DirectoryTableBase is 0x28 on every one of these builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KPCR_PRCB_OFFSET = 0x180  # KPCR.Prcb on every x64 build (DESIGN: OffsetPcrContainedPrcb)


@dataclass(frozen=True)
class KnownBuild:
    """A kernel build wincrash knows by number: its marketing name and the offsets (bytes) read from it."""

    build: int
    name: str
    offsets: dict[str, int] = field(repr=False)  # "<type>.<field>" as the PDB names them

    def off(self, key: str) -> int:
        """Offset of "<type>.<field>"; KeyError names the build when the table does not hold it."""
        try:
            return self.offsets[key]
        except KeyError:
            raise KeyError(f"{key} not known for build {self.build}") from None


def _known(build: int, name: str, active_process_links: int) -> KnownBuild:
    return KnownBuild(build, name, {"_EPROCESS.ActiveProcessLinks": active_process_links})


BUILDS: dict[int, KnownBuild] = {b.build: b for b in (
    _known(7601, "Windows 7 SP1 / 2008 R2 SP1", 0x188),
    _known(9600, "Windows 8.1 / Server 2012 R2", 0x2E8),
    _known(14393, "Windows 10 1607 / Server 2016", 0x2F0),
    _known(17763, "Windows 10 1809 / Server 2019", 0x2E8),
    _known(19041, "Windows 10 2004/20H2", 0x448),
)}
