"""A long markdown answer streamed into chat inside a real tmux, resized mid-answer.

tmux is a real terminal emulator between chat and the user's terminal: it keeps its own grid,
reflows it on resize (as xterm.js does) and its capture is what the user can scroll back to.
Every word of the answer carries an id, so a duplicated or lost line shows as an id seen twice,
never, or out of order.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chat_support import CHAT, chat_env, fake_server
from tests.conftest import require
from tests.fake_openai import FakeServer
from tests.support import wait_for

pytestmark = pytest.mark.slow
STEP_S = 30
ID = re.compile(r"\bs\d\d[plct]\d+\b")


def answer(sections: int) -> tuple[str, list[str]]:
    """Markdown with headings, paragraphs, lists, code and tables; and its ids in order."""
    parts: list[str] = []
    ids: list[str] = []
    for n in range(1, sections + 1):
        words = [f"s{n:02}p{i:03}" for i in range(40)]
        items = [f"s{n:02}l{i}" for i in range(4)]
        code = [f"s{n:02}c{i}" for i in range(5)]
        rows = [f"s{n:02}t{i}" for i in range(3)]
        parts += [
            f"## Section {n:02}\n\n",
            " ".join(words) + "\n\n",
            "".join(f"- {item} with **bold** text and more words to fill it\n" for item in items)
            + "\n",
            "```python\n"
            + "".join(f"print('{c}')  # a comment that makes this line fairly long\n" for c in code)
            + "```\n\n",
            "| key | value |\n|-----|-------|\n"
            + "".join(f"| {row} | {i * 7} |\n" for i, row in enumerate(rows))
            + "\n",
        ]
        ids += words + items + code + rows
    return "".join(parts), ids


class Tmux:
    def __init__(self, socket: str, env: dict[str, str]) -> None:
        self.base = ["tmux", "-L", socket, "-f", "/dev/null"]
        self.env = env

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], env=self.env, capture_output=True, text=True, check=True
        )
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "chat")

    def resize(self, width: int, height: int) -> None:
        """Resize the window; return once the program in it can read the new size."""
        self("resize-window", "-t", "chat", "-x", str(width), "-y", str(height))
        tty = self("display-message", "-p", "-t", "chat", "#{pane_tty}").strip()
        fd = os.open(tty, os.O_RDONLY | os.O_NOCTTY)
        try:
            wait_for(lambda: os.get_terminal_size(fd) == (width, height), STEP_S, "resize")
        finally:
            os.close(fd)

    def history(self) -> str:
        """Scrollback and screen, soft-wrapped rows joined: what the user can scroll through."""
        return self("capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", "chat")

    def wait_for(self, pattern: str) -> None:
        try:
            wait_for(lambda: re.search(pattern, self.history(), re.MULTILINE), STEP_S, pattern)
        except AssertionError as exc:
            raise AssertionError(f"{exc} in tmux:\n{self.screen()}") from None


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Callable[[FakeServer], Tmux]]:
    require(shutil.which("tmux") is not None, "tmux is not installed (apt-get install tmux)")
    started: list[Tmux] = []

    def start(server: FakeServer) -> Tmux:
        env = chat_env(tmp_path, server.url)
        session = Tmux(f"chat-test-{tmp_path.name}", env)
        started.append(session)
        session("new-session", "-d", "-x", "100", "-y", "30", "-s", "chat", "-c", str(tmp_path))
        session("respawn-pane", "-k", "-t", "chat", *CHAT)
        session.wait_for("^>")
        return session

    yield start
    for session in started:
        subprocess.run(
            [*session.base, "kill-server"], env=session.env, capture_output=True, check=False
        )


def test_a_long_answer_resized_mid_stream_shows_every_line_once(
    tmux: Callable[[FakeServer], Tmux],
) -> None:
    """The stream stops at each resize until chat can read the new size, so no frame drawn for
    one size reaches the screen at another (that race is in test_chat_render: it can
    duplicate rows but never lose one)."""
    text, ids = answer(8)
    sections = ("s01p010", "s02p020", "s03c0", "s04p030", "s05t1", "s06p005")
    with fake_server(answer=text, token_delay=0.002, holds=list(sections)) as server:
        session = tmux(server)
        session("send-keys", "-t", "chat", "go", "Enter")
        # Resize while given sections stream: narrower, wider, shorter, back.
        for section, (width, height) in zip(
            sections,
            ((50, 30), (100, 30), (60, 30), (90, 20), (45, 24), (100, 30)),
            strict=True,
        ):
            session.wait_for(section)
            session.resize(width, height)
            server.state.resume.set()
        session.wait_for("tok/s")
        history = session.history()
    assert ID.findall(history) == ids
    assert history.count("tok/s") == 1
    assert history.count("Section") == 8
