"""The terminal while chat is not prompting: keys typed ahead wait, unechoed, for the prompt."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


@contextmanager
def typeahead_quiet(stream: IO[str]) -> Iterator[None]:
    """No echo, no line editing, and Enter stays a carriage return; Ctrl-C still signals.

    Echoed keys would land in the middle of what chat draws; with the line discipline's
    CR -> LF mapping on, an Enter typed ahead reaches the prompt as Ctrl-J, which inserts a
    newline instead of sending the line; and in canonical mode a Ctrl-D typed ahead is eaten
    as an end-of-file nobody reads instead of reaching the prompt.
    """
    import termios  # noqa: PLC0415 (POSIX only)

    try:
        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):
        yield  # not a terminal (a pipe, a closed or captured stdin)
        return
    quiet = list(saved)
    quiet[0] &= ~termios.ICRNL
    quiet[3] &= ~(termios.ECHO | termios.ICANON)
    quiet[6] = list(quiet[6])
    quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
