"""The CLI's door: typer classes for a clean --help, parameter checks, and one-line usage errors.

typer 0.29 labels every option with its Python type (`--force <bool>`, `<list[Path]>`) and every
required argument as `{disk}`; Command and Group show classic metavars instead (`DISK...`, `FILE`,
flags bare). The checks run while typer parses, before any slow work, and raise WincrashError
(one `wincrash: error:` line, exit 2). usage_message() turns typer's own usage errors into one line.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from wincrash.errors import WincrashError

PROG = "wincrash"


class _Argument(TyperArgument):
    """A positional argument shown the classic way: `DISK...` in the usage line, no `<type>` column."""

    def display_type_rich(self, ctx: Any) -> str | None:  # noqa: ANN401 - typer's context type
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        return name if self.required else f"[{name}]"


def _clean(params: list[Any]) -> None:
    """Arguments become `_Argument`; flags lose typer's `<bool>` type label."""
    for param in params:
        if isinstance(param, TyperArgument):
            param.__class__ = _Argument
        elif getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class _CleanHelp:
    """Arguments as `_Argument`, flags without a `<bool>` type, for a command or the group (clean --help)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - passed through to click
        super().__init__(*args, **kwargs)
        _clean(self.params)  # type: ignore[attr-defined]

    def get_help_option(self, ctx: Any) -> Any:  # noqa: ANN401 - click's types
        option = super().get_help_option(ctx)  # type: ignore[misc]
        _clean([option] if option is not None else [])
        return option


class Command(_CleanHelp, TyperCommand):
    """Every command, with a clean --help."""


class Group(_CleanHelp, TyperGroup):
    """The `wincrash` group itself, with the same clean --help."""


def readable(what: str, hint: str = "try sudo, or check the file's owner") -> Any:  # noqa: ANN401
    """A parameter callback: the path must exist, not be a folder, and be readable (checked by opening it)."""
    from wincrash.inputs import open_input

    def check(value: Path | list[Path] | None) -> Path | list[Path] | None:
        for path in value if isinstance(value, list) else [value] if value is not None else []:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                mode = stat.S_IFREG  # missing or unreachable: open_input names the reason
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # opening a FIFO would block: left to the command
                fh, _size = open_input(path, what, hint)
                fh.close()
        return value

    return check


RECOVERY_KEY = re.compile(r"\d{6}(?:-\d{6}){7}")


def recovery_key(value: str | None) -> str | None:
    """A parameter callback for --recovery-key: BitLocker's 48-digit recovery password, 8 groups of 6 digits
    (dashes or spaces between groups, or none), each group a multiple of 11 below 720,896 (the format
    Microsoft documents for BitLocker recovery passwords). Returns the dashed form."""
    if value is None:
        return None
    digits = re.sub(r"[\s-]", "", value)
    groups = [digits[i:i + 6] for i in range(0, 48, 6)]
    if not re.fullmatch(r"\d{48}", digits) or any(int(g) % 11 or int(g) >= 720896 for g in groups):
        raise WincrashError("--recovery-key: give the 48-digit BitLocker recovery key (8 groups of 6 digits, "
                            "e.g. 123456-...; each group a multiple of 11)")
    return "-".join(groups)


def positive_seconds(value: float | None) -> float | None:
    """A parameter callback for --wait: a positive number of seconds (or None)."""
    if value is not None and value <= 0:
        raise WincrashError("--wait takes a positive number of seconds")
    return value


def size(value: str | None) -> str | None:
    """A parameter callback for --ram: a size such as 8G (disk.crashcontrol.parse_size); the text stays."""
    from wincrash.disk.crashcontrol import parse_size

    parse_size(value)  # WincrashError "--ram lots: ..." for a bad size; prepare gets the bytes below
    return value


CHOICE_ERROR = re.compile(r"^(?:Value error, )?'(?P<value>.*)' is not one of (?P<choices>.+?)\.?$")


def usage_message(exc: typer.TyperException) -> str:
    """One line for a usage error click/typer raised: `--dump huge: unknown dump, choose one of ...`, `missing DISK`...

    Choice errors name the option, the value and the choices; other bad values name the option;
    the rest keep typer's sentence. A pointer to the command's --help ends the line.
    """
    param = getattr(exc, "param", None)
    message = " ".join(str(getattr(exc, "message", "") or exc.format_message()).split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else PROG
    if param is not None and type(exc).__name__ == "BadParameter":
        name = param.opts[0] if getattr(param, "param_type_name", "") == "option" else param.human_readable_name
        choice = CHOICE_ERROR.match(message)
        if choice:
            descriptor = getattr(param, "type_descriptor", None)  # the enum's own spelling, not typer's lowercase
            names = [str(c) for c in getattr(descriptor, "choices", None) or ()] or \
                [c.strip("' ") for c in choice.group("choices").split(",")]
            value = choice.group("value")
            close = difflib.get_close_matches(value.lower(), [n.lower() for n in names], n=1, cutoff=0.6)
            hint = next((f"did you mean {n}? " for n in names if close and n.lower() == close[0]), "")
            message = f"{name} {value}: unknown {name.lstrip('-')}, {hint}choose one of {', '.join(names)}"
        else:
            message = f"{name}: {message.removeprefix('Value error, ')}"
    else:
        message = exc.format_message().rstrip(".")
    return f"{message} (see `{command} --help`)"
