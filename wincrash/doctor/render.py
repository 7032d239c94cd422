"""Printing doctor's verdicts: one line per check, each problem followed by its fix; or JSON."""

from __future__ import annotations

import json

import typer

from wincrash.doctor.report import DoctorReport

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def print_doctor(report: DoctorReport, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    if report.vm is not None:
        typer.echo(f"VM: {report.vm['name']}")
    for check in report.checks:
        typer.echo(f"[{_MARK[check.status]}] {check.name}: {check.found}")
        if check.fix:
            typer.echo(f"       fix: {check.fix}")
    c = report.counts
    verdict = "all checks passed" if report.exit_code == 0 else "fix the items above"
    typer.echo(f"{c['ok']} ok, {c['warn']} warnings, {c['fail']} failures: {verdict}")
