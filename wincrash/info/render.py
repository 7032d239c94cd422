"""Print an info Report: plain, aligned text for people, or JSON for scripts."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from wincrash.describe.report import Report

TABLE_SECTIONS = {"runs", "drivers", "cpus", "segments"}
TEXT_ROWS_SHOWN = 10  # text output shows this many rows of a long table; --json has every row


def print_report(report: Report, as_json: bool = False, console: Console | None = None) -> None:
    """Write the report to stdout (problems are part of it, so they go to stdout too)."""
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    console = console or Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]{report.path}[/bold]: {report.title}")
    console.print(f"  size: {report.size:,} bytes")
    for name, section in report.sections.items():
        if section is None:
            continue
        console.print(f"[bold]{name}[/bold]")
        _print_section(console, section)
    for note in report.notes:
        console.print(f"note: {note}")
    if report.problems:
        for problem in report.problems:
            console.print(f"[yellow]warning:[/yellow] {problem}")
        console.print(f"[yellow]{len(report.problems)} problem(s) found[/yellow]")
    elif report.unchecked:
        console.print(f"no problems in the headers read; not checked: {report.unchecked}")
    else:
        console.print("[green]sound: no problems found[/green]")


def _print_section(console: Console, section: Any, indent: str = "  ") -> None:
    if isinstance(section, list):
        _print_rows(console, section, indent, "rows")
        return
    if not isinstance(section, dict):
        console.print(f"{indent}{section}")
        return
    width = max((len(k) for k in section), default=0)
    for key, value in section.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            console.print(f"{indent}{key}:")
            _print_rows(console, value, indent + "  ", key.replace("_", " "))
        elif isinstance(value, dict):
            console.print(f"{indent}{key}:")
            _print_section(console, value, indent + "  ")
        elif value is not None:
            shown = ", ".join("-" if v is None else str(v) for v in value) if isinstance(value, list) else value
            console.print(f"{indent}{key.ljust(width)}  {shown}")


def _print_rows(console: Console, rows: list[Any], indent: str, what: str) -> None:
    """A table of ``rows`` (dicts with the same keys); past TEXT_ROWS_SHOWN rows, the first ones and
    a line saying how many of how many ``what`` are shown."""
    if not rows:
        console.print(f"{indent}(none)")
        return
    if not isinstance(rows[0], dict):
        console.print(f"{indent}{', '.join(map(str, rows))}")
        return
    keys = list(rows[0])
    cells = [[str(row.get(k, "")) for k in keys] for row in rows[:TEXT_ROWS_SHOWN]]
    natural = len(indent) + sum(2 + max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys))
    if natural > console.width:  # a table would cut values short ("0xfffff…"): one block per row instead
        label = max(len(k) for k in keys)
        for cell in cells:
            for i, key in enumerate(keys):
                console.print(f"{indent}{'- ' if i == 0 else '  '}{key.ljust(label)}  {cell[i]}")
        if len(rows) > TEXT_ROWS_SHOWN:
            console.print(f"{indent}({TEXT_ROWS_SHOWN} of {len(rows)} {what} shown; --json has them all)")
        return
    table = Table(box=None, padding=(0, 2, 0, 0), show_edge=False)
    table.add_column("", no_wrap=True)  # indent
    for key in rows[0]:
        table.add_column(key)
    for row in rows[:TEXT_ROWS_SHOWN]:
        table.add_row(indent, *(str(row.get(k, "")) for k in rows[0]))
    console.print(table)
    if len(rows) > TEXT_ROWS_SHOWN:
        console.print(f"{indent}({TEXT_ROWS_SHOWN} of {len(rows)} {what} shown; --json has them all)")
