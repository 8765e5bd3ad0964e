"""What chat tells the browser page: code-block markers on the terminal stream (only in the
browser terminal, invisible on a screen) and the conversation export in the session's folder."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
from rich.console import Console

from chat_cli import clipboard
from chat_cli.api.answer import Answer
from chat_cli.render.markdown import MarkdownRenderer
from chat_cli.render.page import MAX_COPY_BYTES, OSC
from tests.chat_support import PROMPT_READY, XtermScreen, chat_env, fake_server
from tests.conftest import require
from tests.fake_openai import tokens
from tests.support import wait_for

ANSWER = (
    "Here is `is_prime`:\n\n"
    "```python\n"
    "def is_prime(n: int) -> bool:\n"
    "    max_divisor = int(n ** 0.5)  # √n\n"
    "\tif n < 2:  \n"
    "        return False\n"
    "    return all(n % d for d in range(2, max_divisor + 1))\n"
    "```\n\n"
    "1. Then run it:\n\n"
    "   ```sh\n"
    "   python -c 'print(\"héllo_wörld ✓\")'\n"
    "   ```\n\n"
    "> ```\n> quoted_block = 1\n> ```\n\n"
    "Done.\n"
)
# The blocks as drawn: a list item's indentation and a quote's marker are not the code's.
BLOCKS = [
    clipboard.code_blocks(ANSWER)[0],
    "python -c 'print(\"héllo_wörld ✓\")'\n",
    "quoted_block = 1\n",
]
BLOCK = re.compile(rf"\x1b\]{OSC};block\x07")
CODE = re.compile(rf"\x1b\]{OSC};code;([A-Za-z0-9+/=]*)\x07")


def payloads(output: str) -> list[str]:
    return [base64.b64decode(data).decode("utf-8") for data in CODE.findall(output)]


class EveryPiece(MarkdownRenderer):
    """Redraws the live region on every piece: the most markers a stream can carry."""

    def _due(self) -> bool:
        return True


def streamed(text: str, *, marks: bool, width: int = 60) -> tuple[str, list[str]]:
    """(raw output, the screen's transcript) of `text` streamed into a live renderer."""
    screen = XtermScreen(width, 20)
    console = Console(
        file=io.StringIO(), width=width, height=20, force_terminal=True, color_system="256"
    )
    renderer = EveryPiece(console, page_marks=marks)
    renderer.begin()
    for piece in tokens(text):
        renderer.content(piece)
    renderer.finish(Answer(started=1.0, first_token_at=1.5, ended_at=2.0), None)
    output: str = console.file.getvalue()  # type: ignore[attr-defined]
    screen.feed(output)
    return output, screen.transcript()


@pytest.mark.parametrize("width", [60, 24])
def test_each_code_block_hands_its_exact_text_and_the_screen_is_unchanged(width: int) -> None:
    marked, seen = streamed(ANSWER, marks=True, width=width)
    plain, expected = streamed(ANSWER, marks=False, width=width)
    assert f"]{OSC};" not in plain
    assert seen == expected  # the markers draw nothing and move nothing
    assert payloads(marked) == BLOCKS
    assert payloads(marked)[0].splitlines()[2] == "\tif n < 2:  "  # tab, trailing spaces
    # Each block's text follows the `block` marker of its first row, with no other between.
    kinds = re.findall(rf"\x1b\]{OSC};(block|code)", marked)
    assert kinds.count("code") == 3
    assert all(kinds[i - 1] == "block" for i, kind in enumerate(kinds) if kind == "code")


def test_a_block_too_big_for_the_page_gets_no_text_and_an_empty_one_none() -> None:
    console = Console(file=io.StringIO(), width=60, force_terminal=True)
    renderer = MarkdownRenderer(console, live=False, footer=False, page_marks=True)
    small = "```\nsmall = 1\n```\n\n"
    renderer.content(small + "```\n" + "x = 1\n" * (MAX_COPY_BYTES // 6 + 1) + "```\n\n```\n```\n")
    renderer.finish(Answer(), None)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert payloads(output) == ["small = 1\n"]
    assert len(BLOCK.findall(output)) == 3


def test_chat_marks_code_blocks_only_in_the_browser_terminal(
    spawn_chat: Callable[..., pexpect.spawn], tmp_path: Path
) -> None:
    with fake_server(answer=ANSWER) as server:
        for session in ("", "s1"):
            env = chat_env(tmp_path, server.url, MIXVLLM_SESSION=session)
            child = spawn_chat(env=env, dimensions=(30, 80))
            child.expect(PROMPT_READY)
            child.send("show me\r")
            child.expect("tok/s")
            output = child.before
            child.sendeof()
            child.expect(pexpect.EOF)
            if session:
                assert payloads(output) == BLOCKS
            else:
                assert f"]{OSC};" not in output
            # A pipe in the browser terminal gets plain text, never a marker.
            piped = subprocess.run(
                ["sh", "-c", f"{sys.executable} -m chat_cli go | cat"],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            assert "is_prime" in piped.stdout and "\x1b]" not in piped.stdout


def test_chat_keeps_the_sessions_export_folder_up_to_date(
    spawn_chat: Callable[..., pexpect.spawn], tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    folder.mkdir(mode=0o700)
    with fake_server(answer=ANSWER) as server:
        env = chat_env(tmp_path, server.url, MIXVLLM_SESSION="s1", MIXVLLM_CHAT_EXPORT=str(folder))
        child = spawn_chat(env=env)
        child.expect(PROMPT_READY)
        child.send("first question\r")
        child.expect(PROMPT_READY)
        wait_for((folder / "chat.json").exists, 10, "the export")
        data = json.loads((folder / "chat.json").read_text())
        assert [(m["role"], m["content"]) for m in data["messages"]] == [
            ("user", "first question"),
            ("assistant", ANSWER),
        ]
        markdown = (folder / "chat.md").read_text()
        assert "## User\n\nfirst question" in markdown and ANSWER in markdown
        child.send("/clear\r")
        child.expect(PROMPT_READY)
        wait_for(
            lambda: not json.loads((folder / "chat.json").read_text())["messages"], 10, "cleared"
        )
        assert (folder / "chat.json").stat().st_mode & 0o077 == 0


def test_tmux_ignores_the_markers(tmp_path: Path) -> None:
    """A browser terminal user may run chat inside tmux: the private OSC draws nothing there."""
    require(shutil.which("tmux") is not None, "tmux is not installed (apt-get install tmux)")
    base = ["tmux", "-L", f"osc-{tmp_path.name}", "-f", "/dev/null"]
    script = (
        f"printf 'a\\033]{OSC};block\\007b\\033]{OSC};code;aXNfcHJpbWU=\\007c_end\\n'; sleep 30"
    )
    try:
        subprocess.run([*base, "new-session", "-d", "-x", "40", "-y", "5", "sh", "-c", script],
                       check=True)  # fmt: skip

        def capture() -> str:
            pane = [*base, "capture-pane", "-p"]
            return subprocess.run(pane, capture_output=True, text=True, check=True).stdout

        wait_for(lambda: "c_end" in capture(), 10, "the printf")
        assert capture().splitlines()[0] == "abc_end"
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, check=False)
