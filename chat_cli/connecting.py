"""Connecting: the chosen server (`default`, or one of `[servers.NAME]`) and its key, then
the first server that answers /v1/models, waiting for a loading one with progress."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TextIO

from chat_cli.api import client as client_mod
from chat_cli.config import Config
from chat_cli.errors import NoModels, ServerUnreachable
from mixvllm_common.terminal_text import visible


def _fit(line: str, stream: TextIO) -> str:
    """`line` cut to one row of the terminal: a line that wraps would leave its first row
    behind at each rewrite, as \r only returns to the start of the last row."""
    from rich.cells import cell_len, set_cell_size  # noqa: PLC0415 (slow import)

    try:
        width = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        width = 80
    # One column spare: some terminals wrap as soon as the last column is written.
    room = max(1, width - 1)
    return line if cell_len(line) <= room else set_cell_size(line, room - 1) + "…"


def _progress(stream: TextIO) -> Callable[[str], None]:
    last = [0.0]

    def show(line: str) -> None:
        line = visible(line)  # it quotes what the server said
        if stream.isatty():
            stream.write("\r\x1b[K" + _fit(line, stream))
            stream.flush()
            return
        # Not a terminal: one line every 5 s, not a flood.
        now = time.monotonic()
        if now - last[0] >= 5.0:
            last[0] = now
            stream.write(line + "\n")
            stream.flush()

    return show


def connect(config: Config, err: TextIO, key: str | None) -> tuple[str, list[str]]:
    """Find a server that answers /v1/models: the primary, else the fallback."""
    primary, fallback = _server_url(config), config.fallback_url
    urls = [primary] + ([fallback] if fallback and config.server == "default" else [])
    failure: ServerUnreachable | None = None
    for url in urls:
        try:
            if config.wait > 0:
                models = client_mod.wait_for_models(url, key, config.wait, _progress(err))
            else:
                models = client_mod.fetch_models(url, key)
        except ServerUnreachable as unreachable:
            failure = failure or unreachable
            continue
        finally:
            if config.wait > 0 and err.isatty():
                err.write("\r\x1b[K")  # the progress line gives way to what follows
        if not models:
            raise NoModels(url)
        if url != primary:
            err.write(f"chat: {primary} is unreachable; using fallback {url}\n")
        return url, models
    assert failure is not None
    raise ServerUnreachable(primary, failure.reason, urls[1] if len(urls) > 1 else None)


def _server_url(config: Config) -> str:
    return config.servers[config.server].url if config.server != "default" else config.url


def server_key(config: Config) -> str | None:
    """The chosen server's key: read (a command run, maybe) only now, not at --help."""
    if config.server == "default":
        return config.api_key
    from chat_cli import servers  # noqa: PLC0415 (only with [servers.NAME])

    return servers.read_key(config.servers[config.server], os.environ)
