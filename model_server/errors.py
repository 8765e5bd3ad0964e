"""The launcher's domain errors: each is one line for the user at the CLI edge
(`__main__.py`), with the exit status it ends the program with."""

from __future__ import annotations


class LauncherError(Exception):
    """A failure shown as one line; `exit_code` is the program's exit status."""

    exit_code = 1
