"""Options declared once: a flag, env var fallbacks, an optional config file, a default.

Each program lists its options in a table of `Option`s. `add_to_parser` makes the flags
(their `--help` names the env vars and the default), `resolve` picks each value in the
order flag > env var > config file > default, and `markdown_table` renders the tables of
docs/configuration.md, so `--help`, the code and the docs cannot drift apart.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Text -> value; raises ValueError whose message says what is wrong with the text.
Kind = Callable[[str], Any]

_NONE = "\N{EN DASH}"  # an empty table cell
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class OptionError(ValueError):
    """A value cannot be used; the message names where it came from. Each program turns it
    into its own configuration error at its edge."""


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("not a boolean (1/true/yes/on or 0/false/no/off)")


def integer(low: int, high: int, what: str = "an integer") -> Kind:
    """An int in low..high (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise ValueError(f"must be {what} {low}..{high}")
        return value

    return parse


def number(low: float, high: float = math.inf, what: str = "") -> Kind:
    """A float in (low, high]."""
    what = what or f"a number in ({low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan  # fails the range check below
        if not low < value <= high:
            raise ValueError(f"must be {what}")
        return value

    return parse


@dataclass(frozen=True)
class Option:
    dest: str
    flags: tuple[str, ...] = ()  # none: an env var only
    envs: tuple[str, ...] = ()  # the first one set wins
    kind: Kind = str
    default: Any = None
    help: str = ""  # markdown: docs/configuration.md shows it as is, `--help` without backticks
    metavar: str | None = None
    shown_default: str | None = None  # markdown, for a default the program computes itself
    off_flag: str | None = None  # a boolean's `--no-...` twin
    const: Any = None  # the value of the flag given without one (`--resume` vs `--resume NAME`)
    repeat: bool = False  # the flag may be given again: its value is the list of all


def default_text(opt: Option) -> str:
    """The default as docs/configuration.md shows it."""
    if opt.shown_default is not None:
        return opt.shown_default
    if opt.kind is boolean:
        return "on" if opt.default else "off"
    if opt.default is None or opt.default == "":
        return _NONE
    if isinstance(opt.default, float):
        return f"`{opt.default:g}`"
    return f"`{opt.default}`"


def help_text(opt: Option) -> str:
    notes = []
    if opt.envs:
        notes.append("env " + " or ".join(f"${name}" for name in opt.envs))
    default = default_text(opt)
    if default != _NONE:
        notes.append(f"default: {default}")
    if opt.repeat:
        notes.insert(0, "repeatable")
    text = opt.help + (f" [{'; '.join(notes)}]" if notes else "")
    return text.replace("`", "").replace("%", "%%")


def add_to_parser(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add the options that have flags; every default is None, so `resolve` can tell a
    flag that was given from one that was not."""
    for opt in options:
        if not opt.flags:
            continue
        if opt.repeat:
            parser.add_argument(
                *opt.flags, dest=opt.dest, default=None, metavar=opt.metavar, action="append",
                help=help_text(opt),
            )  # fmt: skip
            continue
        if opt.kind is not boolean:
            optional = {"nargs": "?", "const": opt.const} if opt.const is not None else {}
            parser.add_argument(
                *opt.flags, dest=opt.dest, default=None, metavar=opt.metavar, help=help_text(opt),
                **optional,
            )  # fmt: skip
            continue
        group = parser.add_mutually_exclusive_group() if opt.off_flag else parser
        group.add_argument(
            *opt.flags, dest=opt.dest, action="store_const", const=True, default=None,
            help=help_text(opt),
        )  # fmt: skip
        if opt.off_flag:
            group.add_argument(
                opt.off_flag, dest=opt.dest, action="store_const", const=False,
                help=f"the opposite of {opt.flags[0]}",
            )  # fmt: skip


def _convert(opt: Option, raw: object, source: str, hint: str = "") -> Any:
    if isinstance(raw, bool) and opt.kind is boolean:
        return raw
    text = str(raw).strip()
    try:
        return opt.kind(text)
    except ValueError as exc:
        raise OptionError(f"invalid value {text!r} for {source}: {exc}{hint}") from exc


_TOML_TYPES = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _toml_type(raw: object) -> str:
    return next((name for kind, name in _TOML_TYPES if isinstance(raw, kind)), "a date or time")


def _from_file(opt: Option, raw: object, source: str) -> Any:
    """A config file's value: a string is read as an environment variable's text would be;
    a boolean or a number must be what the option takes; nothing else is one value."""
    if isinstance(raw, str):
        return _convert(opt, raw, source)
    shown = str(raw).lower() if isinstance(raw, bool) else repr(raw)
    if not isinstance(raw, bool | int | float):
        raise OptionError(f"invalid value {shown} for {source}: {_toml_type(raw)}, not one value")
    try:
        parsed = opt.kind(shown)
    except ValueError as exc:
        raise OptionError(f"invalid value {shown} for {source}: {exc}") from exc
    if isinstance(parsed, bool):
        if isinstance(raw, bool):
            return parsed
        raise OptionError(f"invalid value {shown} for {source}: needs true or false")
    if isinstance(parsed, int | float) and not isinstance(raw, bool):
        return parsed
    raise OptionError(f"invalid value {shown} for {source}: needs a string (in quotes)")


def value(
    opt: Option,
    env: Mapping[str, str],
    args: argparse.Namespace | None = None,
    file: Mapping[str, object] | None = None,
    file_name: str = "",
) -> Any:
    """One option's value: its flag, else its first non-empty env var, else its key in the
    config file, else its default. Raises OptionError naming the flag, variable or file."""
    given = getattr(args, opt.dest, None) if opt.flags else None
    if given is not None and opt.repeat:
        return [_convert(opt, one, opt.flags[0]) for one in given]
    if given is not None:
        return _convert(opt, given, opt.flags[0])
    hint = f" (for {opt.flags[0]})" if opt.flags else ""
    for name in opt.envs:
        raw = env.get(name, "").strip()
        if raw:
            return _convert(opt, raw, f"${name}", hint)
    if file is not None and opt.dest in file:
        return _from_file(opt, file[opt.dest], f"{opt.dest} in {file_name}")
    return opt.default


def resolve(
    options: Iterable[Option],
    env: Mapping[str, str],
    args: argparse.Namespace | None = None,
    file: Mapping[str, object] | None = None,
    file_name: str = "",
) -> dict[str, Any]:
    return {opt.dest: value(opt, env, args, file, file_name) for opt in options}


def markdown_table(options: Iterable[Option]) -> str:
    rows = ["| flag | env | default | meaning |", "|---|---|---|---|"]
    for opt in options:
        flags = ", ".join(f"`{flag}`" for flag in opt.flags) or _NONE
        if opt.off_flag:
            flags += f" / `{opt.off_flag}`"
        envs = " / ".join(f"`{name}`" for name in opt.envs) or _NONE
        rows.append(f"| {flags} | {envs} | {default_text(opt)} | {opt.help} |")
    return "\n".join(rows) + "\n"
