"""Helpers shared by the chat CLI tests: the fake server, isolated XDG dirs, a PTY driver."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyte
from pyte.screens import StaticDefaultDict

from tests.fake_openai import FakeServer, FakeState
from tests.support import free_port, isolated_home

ROOT = Path(__file__).resolve().parent.parent
CHAT = [sys.executable, "-m", "chat_cli"]
# prompt-toolkit turns bracketed paste on each time it shows the prompt: "ready for input".
PROMPT_READY = re.escape("\x1b[?2004h")
# /copy would reach the desktop's clipboard, or act as in the browser terminal.
CLIPBOARD_ENV = ("DISPLAY", "WAYLAND_DISPLAY", "MIXVLLM_SESSION")
ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-B]|[=>])")


@contextmanager
def fake_server(**state: Any) -> Iterator[FakeServer]:
    server = FakeServer(FakeState(**state)).start()
    try:
        yield server
    finally:
        server.stop()


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def chat_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    """A clean environment: XDG dirs under tmp_path, no API keys (or key file) from outside."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VLLM_API_KEY", "OPENAI_API_KEY", "MIXVLLM_STATE_DIR", *CLIPBOARD_ENV)
        and not k.startswith("CHAT_")
    }
    env.update(isolated_home(tmp_path))
    env.update(
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


class XtermScreen(pyte.HistoryScreen):
    """A pyte screen that resizes the way xterm.js (and tmux) do: with reflow.

    pyte itself crops rows on resize. xterm.js remembers which rows were soft-wrapped (text
    ran past the last column) and, on resize, joins them again when the terminal grows and
    wraps any row whose written cells no longer fit when it shrinks. Written spaces count as
    content, erased cells do not. The cursor keeps its place in the text; with scrollback the
    cursor keeps its screen row and the rows above it go to the scrollback. tmux (3.3) keeps
    the cursor's row even without scrollback (`keep_cursor_row`): rows that the reflow adds
    above the cursor then push the top of the screen into the scrollback at once.
    """

    def __init__(self, columns: int, lines: int, *, keep_cursor_row: bool = False) -> None:
        super().__init__(columns, lines, history=10_000)
        self.keep_cursor_row = keep_cursor_row
        self.set_mode(pyte.modes.LNM)  # a PTY turns \n into \r\n
        self._stream = pyte.Stream(self)

    def feed(self, output: str) -> None:
        self._stream.feed(output)

    def draw(self, data: str) -> None:
        for char in data:
            wraps = self.cursor.x == self.columns and pyte.modes.DECAWM in self.mode
            super().draw(char)
            if wraps:
                self.buffer[self.cursor.y].wrapped = True  # type: ignore[attr-defined]

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        super().erase_in_display(how, *args, **kwargs)
        rows = range(self.cursor.y, self.lines) if how == 0 else range(self.lines)
        for y in rows:
            start = self.cursor.x if how == 0 and y == self.cursor.y else 0
            self._erase(y, start)

    def erase_in_line(self, how: int = 0, private: bool = False) -> None:
        super().erase_in_line(how, private)
        if how in (0, 2):
            self._erase(self.cursor.y, self.cursor.x if how == 0 else 0)

    def _erase(self, y: int, start: int) -> None:
        line = self.buffer[y]
        for x in [x for x in line if x >= start]:
            del line[x]
        if start == 0:
            line.wrapped = False  # type: ignore[attr-defined]

    def _rows(self) -> list[Any]:
        return [*self.history.top, *(self.buffer[y] for y in range(self.lines))]

    def reflow(self, columns: int, lines: int) -> None:
        rows = self._rows()
        cursor_row = len(self.history.top) + self.cursor.y
        # Logical lines: a row plus the soft-wrapped rows after it, as cells.
        logical: list[list[Any]] = []
        cursor_at = (0, 0)
        for index, row in enumerate(rows):
            if not (getattr(row, "wrapped", False) and logical):
                logical.append([])
            cells = logical[-1]
            if cells:  # the row before wrapped: it was full
                cells.extend([None] * (self.columns * -(-len(cells) // self.columns) - len(cells)))
            if index == cursor_row:
                cursor_at = (len(logical) - 1, len(cells) + self.cursor.x)
            used = max(row, default=-1) + 1
            cells.extend(row.get(x) for x in range(used))
        new_rows: list[Any] = []
        new_cursor = (0, 0)
        for number, cells in enumerate(logical):
            if number == cursor_at[0]:
                offset = cursor_at[1]
                new_cursor = (len(new_rows) + offset // columns, offset % columns)
            for start in range(0, max(1, len(cells)), columns):
                line = StaticDefaultDict(self.default_char)
                line.wrapped = start > 0  # type: ignore[attr-defined]
                for x, cell in enumerate(cells[start : start + columns]):
                    if cell is not None:
                        line[x] = cell
                new_rows.append(line)
        grow = max(0, lines - self.lines)
        keeps = self.history.top or self.keep_cursor_row
        keep_row = self.cursor.y + grow if keeps else new_cursor[0]
        screen_y = min(lines - 1, keep_row, new_cursor[0])
        top = new_cursor[0] - screen_y
        self.buffer.clear()
        super().resize(lines, columns)
        self.history.top.clear()
        self.history.top.extend(new_rows[:top])
        for y, line in enumerate(new_rows[top : top + lines]):
            self.buffer[y] = line
        self.cursor.y, self.cursor.x = screen_y, new_cursor[1]

    def transcript(self) -> list[str]:
        """Scrollback and screen as logical lines (soft wraps joined), trailing spaces cut."""
        out: list[str] = []
        for row in self._rows():
            text = "".join(row[x].data for x in range(max(row, default=-1) + 1))
            if getattr(row, "wrapped", False) and out:
                out[-1] += text
            else:
                out.append(text)
        while out and not out[-1].strip():
            out.pop()
        return [line.rstrip() for line in out]
