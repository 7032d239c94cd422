"""One fuzz worker process: reads JSON lines {"path", "fmt", "mode"} on stdin, answers one JSON line each.

Runs `info` (describe_file) and `convert` (convert_file) in-process on the input, or extract_dump
for "pagefile" inputs, under RLIMIT_AS (argv[1] bytes, a blow-up becomes MemoryError). Answers
{"ok": true} when every step ended in a result or a WincrashError, else {"ok": false, "why": ...}
with the traceback; a written dump must pass its own `info` check (exit code 0).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
from pathlib import Path


def _one(path: Path, fmt: str, mode: str) -> str | None:
    from wincrash.convert.pipeline import convert_file
    from wincrash.describe import describe_file
    from wincrash.disk.pagefile import extract_dump
    from wincrash.errors import WincrashError

    out = path.with_name(path.name + ".out.dmp")
    try:
        try:
            describe_file(path).to_dict()
        except WincrashError as exc:
            if "\n" in str(exc):
                return f"info: a multi-line error: {exc!r}"
        try:
            if mode == "pagefile":
                extract_dump(path, out, force=True, progress=False)
            else:
                convert_file(path, out, fmt=fmt, force=True, progress=False)
        except WincrashError as exc:
            return f"{mode}: a multi-line error: {exc!r}" if "\n" in str(exc) else None
        if mode != "pagefile":
            report = describe_file(out)
            if report.exit_code != 0:
                return f"the written {fmt} dump fails its own info check: {json.dumps(report.to_dict())[:2000]}"
        return None
    except BaseException:  # noqa: BLE001 - every other exception is the failure being looked for
        return traceback.format_exc()[-4000:]
    finally:
        for leftover in (out, *out.parent.glob(f".{out.name}.wincrash-partial-*")):
            leftover.unlink(missing_ok=True)


def main() -> None:
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import wincrash.convert.pipeline  # noqa: F401 - imported once, before the first deadline
    import wincrash.describe  # noqa: F401

    for line in sys.stdin:
        item = json.loads(line)
        why = _one(Path(item["path"]), item.get("fmt", "full"), item.get("mode", "convert"))
        sys.stdout.write(json.dumps({"ok": why is None, "why": why}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("WINCRASH_NO_PROGRESS", "1")
    main()
