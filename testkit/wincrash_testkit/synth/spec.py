"""What the generator is asked for (GuestSpec) and what it returns (Guest)."""

from __future__ import annotations

from dataclasses import dataclass, field

from wincrash_testkit.synth.builds import BUILDS
from wincrash_testkit.synth.cpu import CpuState
from wincrash_testkit.synth.layout import RamLayout
from wincrash_testkit.synth.physmem import PageMap

SUPPORTED_BUILDS = tuple(sorted(BUILDS))  # 7601, 9600, 14393, 17763, 19041
NMI_HARDWARE_FAILURE = 0x80


@dataclass(frozen=True)
class GuestSpec:
    """What to generate. ``hyperv``: a root partition under Hyper-V with VBS (see wincrash_testkit.synth.hyperv);
    ``hv_cpus``: which vCPUs' QEMU notes hold the hypervisor's state (None: all of them). ``save_contexts``:
    write each CPU's KPRCB.ProcessorState.ContextFrame (always done for hyperv), listed in truth["saved_contexts"]."""

    build: int = 19041
    cpus: int = 2
    ram_mib: int = 1024
    seed: int = 1
    crashed: bool = False
    bugcheck_code: int = NMI_HARDWARE_FAILURE
    hyperv: bool = False
    noise_pages: int | None = None
    filler_mib: int = 0  # extra random-content RAM (benchmarks): generated while writing, not held in memory
    hv_cpus: tuple[int, ...] | None = None
    save_contexts: bool = False  # fill KPRCB.ProcessorState.ContextFrame, as Windows does at a bugcheck

    def validate(self) -> None:
        """ValueError naming the first field out of range."""
        if self.build not in SUPPORTED_BUILDS:
            raise ValueError(f"unsupported build {self.build}; supported: {', '.join(map(str, SUPPORTED_BUILDS))}")
        if not 1 <= self.cpus <= 64:
            raise ValueError("cpus must be 1..64")
        if not 256 <= self.ram_mib <= 65536 or self.ram_mib % 2:
            raise ValueError("ram_mib must be an even number from 256 to 65536")
        if not 0 <= self.filler_mib <= self.ram_mib // 2:
            raise ValueError("filler_mib must be between 0 and half the RAM")
        if self.hv_cpus is not None:
            if not self.hyperv:
                raise ValueError("hv_cpus needs a hyperv guest")
            if len(set(self.hv_cpus)) != len(self.hv_cpus) or not all(0 <= c < self.cpus for c in self.hv_cpus):
                raise ValueError(f"hv_cpus must be distinct CPU numbers from 0 to {self.cpus - 1}")


@dataclass
class Guest:
    """A generated guest: sparse physical memory, the vCPU states QEMU's notes hold, and the ground truth."""

    spec: GuestSpec
    layout: RamLayout
    mem: PageMap
    cpus: list[CpuState]
    truth: dict = field(default_factory=dict)
