"""The runbooks in docs/runbooks/ run as written: against the synthetic Windows in real QEMU (TCG) and
the libguestfs test disks of tests/disk, through a real shell, so that they cannot rot.

What the WinDbg runbook says WinDbg will print is checked against `wincrash info` of real captures
(a live one and an NMI crash) of the test guest: WinDbg itself cannot run here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from helpers import REPO, run_wincrash
from runbook_parse import Block, missing_lines, parse_blocks, steps

RUNBOOKS = REPO / "docs" / "runbooks"
REQUIRED = ["guest-hung.md", "crashed-wont-boot.md", "production-no-crash.md", "prepare-guest.md",
            "hyperv-in-kvm.md", "windbg.md"]
ALL = sorted(p.name for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
# Runbooks with commands to run (windbg.md holds WinDbg commands only: checked by test_windbg_facts).
RUNNABLE = [n for n in ALL if any(s.sh.directive("skip") is None for s in steps(parse_blocks(RUNBOOKS / n)))]
VM_WORD = re.compile(r"(?<![\w./-])VM(?![\w.-])")
LINK = re.compile(r"\]\(([^)#]+\.md)\)")


def _runs_on_disk(name: str) -> bool:
    """True when a command that is run (not skipped) uses the disk image: the test needs libguestfs."""
    return any("disk.qcow2" in step.sh.text for step in steps(parse_blocks(RUNBOOKS / name))
               if step.sh.directive("skip") is None)


@cache
def _doctor_available() -> bool:
    return _help("doctor").returncode == 0


@cache
def _help(sub: str) -> subprocess.CompletedProcess[str]:
    """`wincrash SUB --help` (wide), run once per subcommand for the whole session: the runbooks name the same
    few commands dozens of times."""
    return run_wincrash(sub, "--help", env={"COLUMNS": "200"})


def _wincrash_bin(directory: Path) -> Path:
    """A `wincrash` on PATH that is this checkout run by this interpreter, as `pip install` would give."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "wincrash"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m wincrash "$@"\n')
    script.chmod(0o755)
    return directory


def _wincrash_commands(block: Block) -> list[list[str]]:
    """Token lists of the `wincrash ...` commands of a ```sh block (skipped blocks included)."""
    out = []
    for command in block.commands():
        tokens = command.split()
        if tokens and tokens[0] == "wincrash":
            out.append(tokens)
    return out


def test_the_six_runbooks_exist_and_the_index_links_each() -> None:
    assert set(REQUIRED) <= set(ALL), f"missing: {set(REQUIRED) - set(ALL)}"
    index = (RUNBOOKS / "README.md").read_text()
    linked = set(LINK.findall(index))
    assert set(ALL) <= linked, f"not in the index: {set(ALL) - linked}"
    for name in ["README.md", *ALL]:  # every relative link between runbooks resolves
        for target in LINK.findall((RUNBOOKS / name).read_text()):
            assert (RUNBOOKS / target).is_file(), f"{name} links to {target}, which does not exist"


@pytest.mark.parametrize("name", ALL)
def test_runbook_blocks_are_well_formed(name: str) -> None:
    """Cheap checks on every block, run or not: shell syntax, reasons for skips, options that exist."""
    blocks = parse_blocks(RUNBOOKS / name)
    assert blocks, f"{name} has no fenced blocks"
    for block in blocks:
        where = f"{name}:{block.line}"
        assert block.lang, f"{where}: give the fence a language (sh, text, windbg, ...)"
        if block.lang != "sh":
            continue
        assert block.commands(), f"{where}: empty sh block"
        skip = block.directive("skip")
        assert skip is None or len(skip) > 10, f"{where}: say why the block is not run"
        syntax = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
        assert syntax.returncode == 0, f"{where}: {syntax.stderr}"
        for tokens in _wincrash_commands(block):
            sub = tokens[1]
            if sub == "doctor" and not _doctor_available():
                continue
            help_text = _help(sub)
            assert help_text.returncode == 0, f"{where}: `wincrash {sub}` is not a command"
            for option in (t.split("=")[0] for t in tokens[2:] if t.startswith("-")):
                assert option in help_text.stdout, f"{where}: `wincrash {sub}` has no option {option}"


class Runner:
    """Runs one runbook's steps in a fresh folder, with fresh test objects behind the placeholders."""

    def __init__(self, name: str, request: pytest.FixtureRequest, root: Path) -> None:
        self.name = name
        self.request = request
        self.root = root
        self.blocks = parse_blocks(RUNBOOKS / name)
        run = "\n".join(b.text for b in self.blocks if b.lang == "sh" and b.directive("skip") is None)
        self.needs_vm = bool(VM_WORD.search(run))
        self.needs_disk = "disk.qcow2" in run
        # the -cpu a runbook shows (on a QEMU command line it cannot run here) is what its VM gets
        cpu = re.search(r"-cpu\s+(\S+)", "\n".join(b.text for b in self.blocks if b.lang == "sh"))
        self.extra_args = ["-cpu", cpu.group(1)] if cpu else None
        self.env = {**os.environ, "PATH": f"{_wincrash_bin(root / 'bin')}:{os.environ['PATH']}",
                    "COLUMNS": "200", "LIBGUESTFS_BACKEND": os.environ.get("LIBGUESTFS_BACKEND", "direct"),
                    "LIBGUESTFS_BACKEND_SETTINGS": os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")}
        self.round = 0
        self.vm: object | None = None
        self.cwd = root

    def start_over(self) -> None:
        """A new folder (with a new copy-on-write disk.qcow2) and a new VM."""
        self.round += 1
        self.cwd = self.root / f"run{self.round}"
        self.cwd.mkdir()
        if self.needs_disk:
            disks = self.request.getfixturevalue("disks")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disks.top_a), "-F", "qcow2",
                            "disk.qcow2"], cwd=self.cwd, check=True)
        if self.needs_vm:
            if self.vm is not None:
                self.vm.stop()  # type: ignore[attr-defined]
            make_guest = self.request.getfixturevalue("make_guest")
            self.vm = make_guest(name=f"vm{self.round}", extra_args=self.extra_args)

    def provide(self, what: str, filename: str) -> None:
        """Put an input the test bed cannot produce live into the run folder (`<!-- test: given ... -->`)."""
        assert what == "hyperv-elf", f"{self.name}: unknown `given {what}`"
        # A crashed root partition under Hyper-V with VBS, every vCPU note in hypervisor context: what
        # dump-guest-memory gives for such a guest (the generator of the convert tests).
        from wincrash_testkit.synth.cli import run as make_guest_elf

        assert make_guest_elf(["--hyperv", "--crashed", "--cpus", "2", "--ram-mib", "256",
                               "--out", str(self.cwd / filename)]) == 0

    def substitute(self, text: str) -> str:
        if self.vm is None:
            return text
        return VM_WORD.sub(str(self.vm.qmp_path), text)  # type: ignore[attr-defined]

    def run(self) -> int:
        """Every step in order; returns the number of commands run."""
        self.start_over()
        ran = 0
        for step in steps(self.blocks):
            where = f"{self.name}:{step.sh.line}"
            if step.sh.directive("skip") is not None:
                continue  # syntax-checked in test_runbook_blocks_are_well_formed
            if step.sh.directive("fresh") is not None:
                self.start_over()
            given = step.sh.directive("given")
            if given is not None:
                self.provide(*given.split())
            output = ""
            for command in step.sh.commands():
                if command.startswith("wincrash doctor") and not _doctor_available():
                    pytest.skip("doctor not available")
                proc = subprocess.run(["bash", "-c", self.substitute(command)], cwd=self.cwd, env=self.env,
                                      capture_output=True, text=True, timeout=600)
                ran += 1
                output += proc.stdout + proc.stderr
                assert proc.returncode in step.sh.exit_codes(), (
                    f"{where}: `{command}` exited {proc.returncode}, the runbook says {step.sh.exit_codes()}\n"
                    f"{proc.stdout}\n{proc.stderr}")
                assert "Traceback" not in proc.stderr, f"{where}: {proc.stderr}"
            for text in step.expected:
                if text.directive("example") is not None:
                    continue
                missing = missing_lines(self.substitute(text.text), output)
                assert not missing, f"{self.name}:{text.line}: expected lines not in the output:\n" + \
                    "\n".join(missing) + f"\n--- output of the block at {where} ---\n{output}"
        return ran


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.guestfs] if _runs_on_disk(n) else []) for n in RUNNABLE])
def test_runbook_runs_as_written(name: str, request: pytest.FixtureRequest, short_dir: Path) -> None:
    runner = Runner(name, request, short_dir / "rb")
    ran = runner.run()
    print(f"{name}: {ran} commands ran")
    assert ran > 0


def test_runbook_test_fails_on_wrong_output() -> None:
    """The matcher the runbook test relies on rejects output that differs, and tolerates `...`."""
    output = "dumped memory (elf, 256.1 MiB) in 1.2 s\nwrote /t/MEMORY.DMP: bugcheck 0x00000161 LIVE_SYSTEM_DUMP\n"
    assert missing_lines("dumped memory (elf, ... MiB) in ... s\nwrote .../MEMORY.DMP: bugcheck 0x00000161",
                         output) == []
    assert missing_lines("wrote .../MEMORY.DMP: bugcheck 0x00000080", output) == \
        ["wrote .../MEMORY.DMP: bugcheck 0x00000080"]
    # order matters: a line that appears only before the previous match does not count
    assert missing_lines("wrote ...\ndumped memory", output) == ["dumped memory"]


def _windbg_lines(info: dict[str, object], cpus: int) -> set[str]:
    """What WinDbg prints for a dump with this header, from `wincrash info --json` facts."""
    header, bugcheck = info["header"], info["bugcheck"]
    assert isinstance(header, dict) and isinstance(bugcheck, dict)
    code = int(bugcheck["code"], 16)
    args = [int(a, 16) for a in bugcheck["parameters"]]
    build = int(header["build"])
    windows = "Windows 10" if build >= 10240 else {9600: "Windows 8.1", 9200: "Windows 8", 7601: "Windows 7"}[build]
    kind = {1: "Kernel Complete Dump File", 5: "Kernel Bitmap Dump File"}[int(header["dump_type"])]
    assert int(header["processors"]) == cpus
    return {
        f"{kind}: Full address space is available",
        f"{windows} Kernel Version {build} MP ({cpus} procs) Free x64",
        f"BugCheck {code:X}, {{{', '.join(f'{a:x}' for a in args)}}}",
        f"Bugcheck code {code:08X}",
        "Arguments " + " ".join(f"{a >> 32:08x}`{a & 0xFFFFFFFF:08x}" for a in args),
    }


@pytest.mark.qemu
@pytest.mark.slow
def test_windbg_facts_match_info_of_real_captures(make_guest, short_dir: Path) -> None:  # noqa: ANN001
    """windbg.md's WinDbg output (bugchecks of live and NMI dumps, the banner) is what our dumps carry."""
    guest = make_guest(name="wd", cpus=2)
    facts: set[str] = set()
    for args, code in ((["-o", short_dir / "live.dmp"], 0x161), (["--crash", "-o", short_dir / "crash.dmp"], 0x80)):
        run_wincrash("capture", guest.qmp_path, *args, check=True)
        out = args[-1]
        proc = run_wincrash("info", out, "--json", check=True)
        info = json.loads(proc.stdout)
        assert int(info["bugcheck"]["code"], 16) == code
        facts |= _windbg_lines(info, cpus=2)
        out.unlink()
    said = set()
    for block in parse_blocks(RUNBOOKS / "windbg.md"):
        if block.lang == "text" and block.directive("windbg") is not None:
            said |= {" ".join(line.split()) for line in block.text.splitlines() if line.strip()}
    assert said, "windbg.md has no <!-- test: windbg --> blocks"
    assert said == facts, f"windbg.md says but info disagrees: {said - facts}; info says but windbg.md lacks: " \
                          f"{facts - said}"
