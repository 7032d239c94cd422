"""The house rules of issue 9, checked on the product's own sources: no import cycle, no module over 400
lines, commands reach the lower layers (formats, memory, windows) only through their domain packages, and
memory/ never imports anything above it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "wincrash"
COMMANDS = ("wincrash.info", "wincrash.capture", "wincrash.disk", "wincrash.doctor", "wincrash.cli")
LOW_LAYERS = ("wincrash.memory", "wincrash.windows", "wincrash.formats")
# memory/ stands on formats/ and the shared plumbing; the DMP reader (dmp.reader, dmp.pagemap) is a format reader
# built only on formats/, which a DMP given as input needs. Everything else in wincrash is above memory/.
MEMORY_MAY_IMPORT = ("wincrash.memory", "wincrash.formats", "wincrash.errors", "wincrash.inputs", "wincrash.output",
                     "wincrash.progress", "wincrash.dmp.reader", "wincrash.dmp.pagemap")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports() -> dict[str, set[str]]:
    """module -> the wincrash modules it imports (lazy imports inside functions included)."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wincrash"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in list(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_imports()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_dmp_reader_stands_on_formats_only() -> None:
    graph = _imports()
    below = ("wincrash.formats", "wincrash.errors", "wincrash.dmp.reader")
    bad = sorted((a, b) for a in ("wincrash.dmp.reader", "wincrash.dmp.pagemap") for b in graph[a]
                 if not b.startswith(below))
    assert bad == []


def test_commands_do_not_reach_into_lower_layers() -> None:
    bad = sorted((a, b) for a, targets in _imports().items() for b in targets
                 if a.startswith(COMMANDS) and b.startswith(LOW_LAYERS))
    assert bad == []


def test_memory_imports_nothing_above_it() -> None:
    bad = sorted((a, b) for a, targets in _imports().items() for b in targets
                 if a.startswith("wincrash.memory") and not b.startswith(MEMORY_MAY_IMPORT))
    assert bad == []


def test_no_module_over_400_lines() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
