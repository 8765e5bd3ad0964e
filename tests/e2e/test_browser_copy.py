"""Copy buttons on chat's code blocks and the chat export, in Chromium at 1x.

chat runs in the page's session against the fault server with a scripted answer, so the
clipboard can be checked against exact text: underscores, indentation, tabs, unicode.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from chat_cli.clipboard import code_blocks
from tests.chat_support import fake_server
from tests.support import isolated_home
from tests.test_chat_page import ANSWER, BLOCKS

from .browser_support import (
    TEST_SHELL,
    buffer_text,
    chromium,
    collect_problems,
    terminal_server,
    type_line,
    wait_connected,
    wait_for_clipboard,
    wait_for_js,
    wait_for_text,
)

pytestmark = pytest.mark.browser

CHAT = str(Path(sys.executable).with_name("chat"))
SHOTS = Path(os.environ.get("MIXVLLM_SHOTS", "/tmp/copy-shots"))
QUESTION = "show me is_prime"
# Each copy button: its row in the buffer, the text of that row under it, and its box.
BUTTONS = """() => {
  const term = window.mixvllm.term, buf = term.buffer.active;
  const screen = term.element.querySelector(".xterm-screen").getBoundingClientRect();
  const cell = screen.width / term.cols, rowHeight = screen.height / term.rows;
  return [...term.element.querySelectorAll(".copy-code")].map((b) => {
    const r = b.getBoundingClientRect();
    const row = buf.viewportY + Math.floor((r.top + r.height / 2 - screen.top) / rowHeight);
    const first = Math.floor((r.left - screen.left) / cell);
    const last = Math.ceil((r.right - screen.left) / cell) - 1;
    const line = buf.getLine(row).translateToString(false);
    return { row, under: line.slice(first, last + 1), next: buf.getLine(row + 1)
      .translateToString(true), right: r.right, screenRight: screen.right, width: r.width };
  });
}"""


@pytest.fixture
def chat_url(tmp_path: Path) -> Iterator[str]:
    with fake_server(answer=ANSWER) as model:
        env = {"MODEL_SERVER_URL": model.url, **isolated_home(tmp_path)}
        args = ["--shell", TEST_SHELL, "--chat-command", f"{CHAT} --timeout 30"]
        with terminal_server(args, env) as (url, _):
            yield url


def ask(page: Page) -> None:
    wait_connected(page)
    wait_for_text(page, "Connected to", 30000)
    type_line(page, QUESTION)
    wait_for_text(page, "tok/s", 30000)
    wait_for_js(page, "(n) => window.mixvllm.copyButtons === n", len(BLOCKS), 10000)


def test_each_code_block_copies_its_exact_text_from_a_button_beside_it(chat_url: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p, chromium(p) as browser:
        context = browser.new_context(viewport={"width": 900, "height": 700}, device_scale_factor=1)
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = context.new_page()
        problems = collect_problems(page)
        page.goto(chat_url)
        ask(page)
        page.screenshot(path=str(SHOTS / "copy-buttons.png"))

        buttons = page.evaluate(BUTTONS)
        first_lines = [block.splitlines()[0].strip() for block in BLOCKS]
        for button, first_line in zip(buttons, first_lines, strict=True):
            assert button["under"].strip() == "", button  # it covers no character
            assert first_line in button["next"], button  # on the block's first row
            assert button["screenRight"] - 12 <= button["right"] <= button["screenRight"] + 1
        for index, block in enumerate(BLOCKS):
            page.locator(".copy-code").nth(index).click()
            copied = page.evaluate("() => navigator.clipboard.readText()")
            assert copied == block
        assert page.locator(".copy-code").first.inner_text() in ("copy", "copied")
        page.locator(".copy-code").nth(len(BLOCKS) - 1).hover()
        page.screenshot(path=str(SHOTS / "copy-clicked.png"))
        # Clicking a button neither selects text nor types anything into chat.
        assert page.evaluate("() => window.mixvllm.term.getSelection()") == ""
        assert QUESTION in buffer_text(page)

        # A reload replays the output, markers included: the buttons come back.
        page.reload()
        wait_connected(page)
        wait_for_js(page, "(n) => window.mixvllm.copyButtons === n", len(BLOCKS), 10000)
        page.locator(".copy-code").first.click()
        assert page.evaluate("() => navigator.clipboard.readText()") == BLOCKS[0]
        assert problems == []


def test_chat_copy_reaches_the_owner_clipboard_with_a_notice(chat_url: str) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        context = browser.new_context(viewport={"width": 900, "height": 700}, device_scale_factor=1)
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = context.new_page()
        problems = collect_problems(page)
        page.goto(chat_url)
        ask(page)
        type_line(page, "/copy 2")
        wait_for_text(page, "browser's clipboard (OSC 52)")
        copied = code_blocks(ANSWER)[1]  # /copy takes the markdown's text, list indent and all
        wait_for_clipboard(page, copied)
        page.locator("#notice").wait_for(state="visible", timeout=5000)
        assert page.locator("#notice code").inner_text() == copied.replace("\n", "\u21b5")
        assert problems == []


def test_the_export_menu_downloads_the_conversation_as_markdown_and_json(
    chat_url: str, tmp_path: Path
) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 700, "height": 500}, device_scale_factor=1)
        problems = collect_problems(page)
        page.goto(chat_url)
        wait_connected(page)
        wait_for_text(page, "Connected to", 30000)
        page.click("#export")
        page.locator("#export-panel").wait_for(state="visible", timeout=5000)
        page.screenshot(path=str(SHOTS / "export-menu.png"))
        ask(page)

        with page.expect_download() as markdown_download:
            page.click("#export-markdown")
        with page.expect_download() as json_download:
            page.click("#export")
            page.click("#export-json")
        markdown = Path(markdown_download.value.path()).read_text(encoding="utf-8")
        data = json.loads(Path(json_download.value.path()).read_text(encoding="utf-8"))
        assert markdown_download.value.suggested_filename.endswith(".md")
        assert json_download.value.suggested_filename.endswith(".json")
        assert f"## User\n\n{QUESTION}\n\n## Assistant\n\n{ANSWER}" in markdown
        assert [(m["role"], m["content"]) for m in data["messages"]] == [
            ("user", QUESTION),
            ("assistant", ANSWER),
        ]
        assert page.locator("#export-panel").is_hidden()
        assert problems == []
