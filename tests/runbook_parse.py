"""Read the runbooks in docs/runbooks/ as executable steps, and match expected output.

The conventions (also written down for runbook authors in docs/runbooks/README.md):
- a ```sh block holds commands a user types, one per line (a trailing backslash continues a line;
  lines starting with # are comments);
- ```text blocks after a ```sh block (prose between is fine, other blocks are not) are the output to
  expect from that block (stdout and stderr together): every non-blank line must appear, in order,
  in some output line; `...` in an expected line stands for anything (times, sizes, run-dependent paths);
- an HTML comment right before a block steers the test and is invisible to the reader:
  `<!-- test: exit 1 -->` (or `exit 0 or 1: why`), `<!-- test: skip why -->` (the block is only
  syntax-checked: root-only host setup, KVM, libvirt), `<!-- test: fresh -->` (start over: a new
  VM, a new folder and a new copy of the disk: the runbook offers alternatives), `<!-- test: given
  hyperv-elf vm.elf -->` (the test puts a synthetic Hyper-V root-partition dump there first), and
  `<!-- test: example -->` on a ```text block that is illustrative and not matched.
- other fences (```windbg, ```xml, ```powershell) are for the reader only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^```(\S*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced block with the directives written just above it."""

    lang: str
    text: str
    line: int  # 1-based line of the opening fence, for error messages
    directives: list[str] = field(default_factory=list)

    def directive(self, word: str) -> str | None:
        """The rest of the first directive that starts with ``word`` ("" when bare), else None."""
        for d in self.directives:
            if d == word or d.startswith(word + " ") or d.startswith(word + ":"):
                return d[len(word):].lstrip(" :")
        return None

    def commands(self) -> list[str]:
        """The commands of a ```sh block: continuation lines joined, comments and blanks dropped."""
        out: list[str] = []
        pending = ""
        for raw in self.text.splitlines():
            line = raw.rstrip()
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            out.append(pending + line)
            pending = ""
        if pending:
            out.append(pending.rstrip())
        return out

    def exit_codes(self) -> set[int]:
        """Accepted exit codes: `exit 1`, `exit 0 or 1: reason`; 0 when not said."""
        spec = self.directive("exit")
        if spec is None:
            return {0}
        return {int(n) for n in re.findall(r"\d+", spec.split(":")[0])}


@dataclass
class Step:
    """A ```sh block and the ```text blocks that follow it (before any other block)."""

    sh: Block
    expected: list[Block]


def parse_blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, in order, with its directives."""
    blocks: list[Block] = []
    directives: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = DIRECTIVE.match(line.strip())
        if m:
            directives.append(m.group(1))
            i += 1
            continue
        m = FENCE.match(line)
        if m:
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"{path.name}:{start + 1}: fence never closed")
            blocks.append(Block(m.group(1), "\n".join(body), start + 1, directives))
            directives = []
        elif line.strip():
            directives = []  # a directive belongs to the block right below it only
        i += 1
    return blocks


def steps(blocks: list[Block]) -> list[Step]:
    """Pair every ```sh block with the ```text blocks that follow it."""
    out: list[Step] = []
    for block in blocks:
        if block.lang == "sh":
            out.append(Step(block, []))
        elif block.lang == "text" and out and (not out[-1].expected or out[-1].expected[-1] is not block) \
                and _follows(blocks, out[-1].sh, block):
            out[-1].expected.append(block)
    return out


def _follows(blocks: list[Block], sh: Block, text: Block) -> bool:
    """True when only ```text blocks stand between ``sh`` and ``text``."""
    between = blocks[blocks.index(sh) + 1:blocks.index(text)]
    return all(b.lang == "text" for b in between)


def _norm(s: str) -> str:
    return " ".join(s.split())


def missing_lines(expected: str, output: str) -> list[str]:
    """Expected lines not found (in order) in the output; [] when everything matched.

    Whitespace runs count as one space (info aligns columns); `...` matches anything within a line.
    """
    out_lines = [_norm(x) for x in output.splitlines()]
    pos = 0
    missing: list[str] = []
    for want in (_norm(x) for x in expected.splitlines()):
        if not want:
            continue
        pattern = re.compile(".*?".join(re.escape(part) for part in want.split("...")))
        for k in range(pos, len(out_lines)):
            if pattern.search(out_lines[k]):
                pos = k + 1
                break
        else:
            missing.append(want)
    return missing
