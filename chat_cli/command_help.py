"""/help's layout: each command and its description, wrapped for the terminal's width."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

KEYS_HELP = (
    "Enter sends · Alt-Enter or Ctrl-J inserts a newline · Ctrl-C stops an answer or clears "
    "the line · Ctrl-D exits"
)
HELP_MIN_DESCRIPTION = 24  # narrower than this beside the names: descriptions go under them


def help_lines(entries: Sequence[tuple[str, str]], columns: int | None) -> list[str]:
    """/help's (name with arguments, description) entries laid out for a terminal `columns`
    wide (None: one line per command): wrapped at word boundaries, so the terminal never
    breaks a word or the description column."""
    name_width = max(len(name) for name, _ in entries)
    width = columns if columns and columns > 20 else 10**6
    room = width - name_width - 5  # the description column, short of the last cell
    beside = room >= HELP_MIN_DESCRIPTION
    lines: list[str] = []
    for name, description in entries:
        if beside:
            text = textwrap.wrap(description, room)
            lines.append(f"  {name:<{name_width}}  {text[0]}")
            lines += [" " * (name_width + 4) + more for more in text[1:]]
        else:
            lines += textwrap.wrap(name, width - 1, initial_indent="  ", subsequent_indent="    ")
            lines += textwrap.wrap(description, width - 1, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6)  # fmt: skip
    lines += textwrap.wrap(KEYS_HELP, width - 1, initial_indent="  ", subsequent_indent="  ")
    return lines
