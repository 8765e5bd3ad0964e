"""Helpers every kind of test needs: a free port, a wait with a deadline, an isolated home."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on (the OS picked it, then it was released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _polls(timeout: float, what: str) -> Iterator[float]:
    """Delays between checks, growing to 50 ms; raises AssertionError once past the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() <= deadline:
        yield delay
        delay = min(delay * 2, 0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    for delay in _polls(timeout, what or repr(condition)):
        if condition():
            return
        time.sleep(delay)


async def wait_for_async(
    condition: Callable[[], object], timeout: float = 10.0, what: str = ""
) -> None:
    """wait_for for code on an event loop: the loop keeps running between checks."""
    for delay in _polls(timeout, what or repr(condition)):
        if condition():
            return
        await asyncio.sleep(delay)


def isolated_home(home: Path) -> dict[str, str]:
    """HOME and the XDG dirs under `home`, so a program never reads or writes the user's."""
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
