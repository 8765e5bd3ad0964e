"""Shared parts of the browser tests: a real terminal server process and Debian's Chromium."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from playwright.sync_api import Browser, Page, Playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.conftest import require
from tests.support import wait_for
from tests.terminal_support import server_process

if TYPE_CHECKING:
    from tests.team_support import Account

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TEST_SHELL = "/bin/bash --norc --noprofile"

# The visible text of xterm.js's active buffer, one terminal row per line.
BUFFER_TEXT = """() => {
  const buf = window.mixvllm.term.buffer.active;
  const lines = [];
  for (let i = 0; i < buf.length; i++) lines.push(buf.getLine(i).translateToString(true));
  return lines.join("\\n");
}"""


def buffer_text(page: Page) -> str:
    text: str = page.evaluate(BUFFER_TEXT)
    return text


def wait_for_text(page: Page, needle: str, timeout_ms: int = 15000) -> None:
    wait_for_js(page, f"(needle) => ({BUFFER_TEXT})().includes(needle)", needle, timeout_ms)


def wait_for_js(page: Page, predicate: str, arg: object, timeout_ms: int) -> None:
    """page.wait_for_function, but a timeout shows what the terminal displayed."""
    try:
        page.wait_for_function(predicate, arg=arg, timeout=timeout_ms)
    except PlaywrightTimeoutError:
        screen = "\n".join(buffer_text(page).rstrip().splitlines()[-40:])
        message = f"timed out waiting for {arg!r}; the terminal shows:\n{screen}"
        raise AssertionError(message) from None


def wait_for_chars_after(page: Page, after: str, chars: int, timeout_ms: int) -> None:
    """At least `chars` visible characters after the last `after` on screen (an answer
    streaming below its question)."""
    wait_for_js(
        page,
        f"""([q, n]) => {{
            const text = ({BUFFER_TEXT})();
            const at = text.lastIndexOf(q);
            return at >= 0 && text.slice(at + q.length).replace(/\\s/g, "").length >= n;
        }}""",
        [after, chars],
        timeout_ms,
    )


def clipboard(page: Page) -> str:
    text: str = page.evaluate("() => navigator.clipboard.readText()")
    return text


def wait_for_clipboard(page: Page, want: str, timeout_s: float = 5.0) -> None:
    """Polled from here: wait_for_function takes the Promise readText returns as truthy."""
    wait_for(lambda: clipboard(page) == want, timeout_s, f"the clipboard to hold {want!r}")


def wait_connected(page: Page, timeout_ms: int = 15000) -> None:
    """The page's socket is open and its setup has arrived: sessionId is the server's."""
    page.wait_for_function("() => window.mixvllm && window.mixvllm.connected", timeout=timeout_ms)


def type_line(page: Page, text: str) -> None:
    page.click("#terminal")
    page.keyboard.type(text)
    page.keyboard.press("Enter")


@contextmanager
def terminal_server(
    args: Sequence[str], env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run `python -m terminal_server ARGS --port 0`; yield (the URL it prints, the process)."""
    # The access log is not read here: a full stderr pipe would stall the server.
    with server_process(*args, env=env, stderr=subprocess.DEVNULL) as (proc, url):
        yield url, proc


@contextmanager
def chromium(p: Playwright) -> Iterator[Browser]:
    require(os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing (make system-packages)")
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


def collect_problems(page: Page) -> list[str]:
    """Page errors, failed responses and console errors, gathered while the test runs."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )
    page.on(
        "console",
        lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    return problems


# In the page (a logged-in user's): the `setup` a WebSocket naming `query` gets, and the status
# of a request with the user's cookies (and a CSRF token, if given).
SETUP_OF = """async (query) => await new Promise((resolve, reject) => {
  const ws = new WebSocket(new URL("ws?" + query, location.href).href.replace(/^http/, "ws"));
  ws.onmessage = (e) => { const m = JSON.parse(e.data); if (m[0] === "setup") { ws.close();
    resolve(m[1]); } };
  ws.onerror = () => reject(new Error("websocket failed"));
})"""
STATUS_OF = (
    "async ([path, method, csrf]) => (await fetch(path, {method, headers: csrf ? "
    "{'X-CSRF-Token': csrf} : {}})).status"
)


def log_in(browser: Browser, url: str, who: Account, path: str = "") -> Page:
    """A new browser context (device scale factor 1) that opens `url + path`, lands on the
    login page and logs in as `who`; returns its page once the terminal is connected."""
    context = browser.new_context(viewport={"width": 900, "height": 600}, device_scale_factor=1)
    page = context.new_page()
    page.goto(url + path)
    page.wait_for_url(re.compile(r"/login\?next="))  # no login yet: the login page
    page.fill("#user", who.name)
    page.fill("#password", who.password)
    page.click("#submit")
    wait_connected(page)
    return page


def whoami(page: Page, tag: str) -> str:
    """The user the page's shell runs as (the echoed command line has `$(`, not a name)."""
    type_line(page, f'echo "{tag}<$(id -un)>"')
    pattern = rf"{tag}<([a-z]+)>"
    wait_for_js(page, f"(re) => new RegExp(re).test(({BUFFER_TEXT})())", pattern, 15000)
    match = re.search(pattern, buffer_text(page))
    assert match is not None
    return match.group(1)
