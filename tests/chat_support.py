"""Helpers shared by the chat CLI tests: the fake server, isolated XDG dirs, a PTY driver."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.fake_openai import FakeServer, FakeState

ROOT = Path(__file__).resolve().parent.parent
CHAT = [sys.executable, "-m", "chat_cli"]
# prompt-toolkit turns bracketed paste on each time it shows the prompt: "ready for input".
PROMPT_READY = re.escape("\x1b[?2004h")
ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-B]|[=>])")


@contextmanager
def fake_server(**state: Any) -> Iterator[FakeServer]:
    server = FakeServer(FakeState(**state)).start()
    try:
        yield server
    finally:
        server.stop()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def chat_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    """A clean environment: XDG dirs under tmp_path, no API keys from the outside."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VLLM_API_KEY", "OPENAI_API_KEY") and not k.startswith("CHAT_")
    }
    env.update(
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_STATE_HOME=str(tmp_path / "state"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        MODEL_SERVER_URL=url,
        TERM="xterm-256color",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def conversations(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data" / "mixvllm" / "conversations").glob("*.json"))


def visible(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


def exit_status(child: Any) -> int:
    """A pexpect child's exit code, waiting for the exit (close() alone may signal a child
    that is still tearing down on a loaded machine)."""
    status: int = child.wait()
    child.close()
    return status


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)
