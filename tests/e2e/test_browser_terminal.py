"""The page in Debian's headless Chromium: type, see output, resize, reload, same session."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import WebSocketRoute, sync_playwright

from .browser_support import (
    BUFFER_TEXT,
    TEST_SHELL,
    chromium,
    collect_problems,
    terminal_server,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def server_url() -> Iterator[str]:
    # The browser path must not depend on a model server: a plain shell, no chat.
    with terminal_server(["--no-autostart-chat", "--shell", TEST_SHELL]) as (url, _):
        yield url


def test_type_resize_reload_reattach(server_url: str) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        problems = collect_problems(page)

        page.goto(server_url)
        assert "token=" not in page.url  # swapped for a cookie and redirected away
        page.wait_for_function("() => window.mixvllm && window.mixvllm.connected", timeout=15000)
        page.wait_for_function("() => /[?&]session=/.test(location.search)", timeout=15000)
        session = page.evaluate("() => window.mixvllm.sessionId")
        assert session
        assert session in page.title()

        page.click("#terminal")
        page.keyboard.type("X=same-shell; echo hello-$((6*7))")
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => ({BUFFER_TEXT})().includes('hello-42')", timeout=15000)

        # Resize the window: the terminal refits and the PTY learns the new size.
        before = page.evaluate("() => [window.mixvllm.term.rows, window.mixvllm.term.cols]")
        page.set_viewport_size({"width": 640, "height": 420})
        shrunk = "window.mixvllm.term.cols < {} && window.mixvllm.term.rows < {}"
        page.wait_for_function(f"() => {shrunk.format(before[1], before[0])}", timeout=15000)
        rows, cols = page.evaluate("() => [window.mixvllm.term.rows, window.mixvllm.term.cols]")
        page.keyboard.type("stty size")
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => ({BUFFER_TEXT})().includes('{rows} {cols}')", timeout=15000)

        # Reload: same session id, recent output replayed, same shell state.
        page.reload()
        page.wait_for_function("() => window.mixvllm && window.mixvllm.connected", timeout=15000)
        assert page.evaluate("() => window.mixvllm.sessionId") == session
        page.wait_for_function(f"() => ({BUFFER_TEXT})().includes('hello-42')", timeout=15000)
        page.click("#terminal")
        page.keyboard.type("echo got-$X")
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => ({BUFFER_TEXT})().includes('got-same-shell')", timeout=15000)

        # The restart control ends the session and starts a fresh one in this tab.
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#restart")
        page.wait_for_function(
            f"() => window.mixvllm.connected && window.mixvllm.sessionId !== '{session}'",
            timeout=15000,
        )
        fresh = page.evaluate("() => window.mixvllm.sessionId")
        assert f"session={fresh}" in page.url
        page.click("#terminal")
        page.keyboard.type("echo x=${X:-fresh}")
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => ({BUFFER_TEXT})().includes('x=fresh')", timeout=15000)
        assert problems == []


def test_second_tab_takes_over_and_the_first_can_take_it_back(server_url: str) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        context = browser.new_context(viewport={"width": 900, "height": 600})
        first = context.new_page()
        first.goto(server_url)
        first.wait_for_function("() => window.mixvllm && window.mixvllm.connected")
        first.wait_for_function("() => /[?&]session=/.test(location.search)")
        session = first.evaluate("() => window.mixvllm.sessionId")

        second = context.new_page()  # same cookie jar: no token needed any more
        second.goto(first.url)
        second.wait_for_function("() => window.mixvllm && window.mixvllm.connected")
        assert second.evaluate("() => window.mixvllm.sessionId") == session

        overlay = first.locator("#overlay")
        overlay.wait_for(state="visible", timeout=15000)
        assert "another tab" in first.locator("#overlay-text").inner_text()
        first.click("#overlay-action")
        first.wait_for_function("() => window.mixvllm.connected", timeout=15000)
        overlay.wait_for(state="hidden", timeout=15000)
        assert first.evaluate("() => window.mixvllm.sessionId") == session
        second.locator("#overlay").wait_for(state="visible", timeout=15000)


def test_connected_waits_for_the_servers_session_not_the_address(server_url: str) -> None:
    """`window.mixvllm.connected` (what every browser test waits on) is true only once the
    socket's setup arrived: before it, `sessionId` is still the address's, which may be a
    guessed or gone id. The server's setup frame is held back here to make that window wide."""
    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 900, "height": 600})
        page.goto(server_url)  # the token for the cookie
        page.wait_for_function("() => window.mixvllm && window.mixvllm.connected", timeout=15000)
        held: list[str | bytes] = []
        routes: list[WebSocketRoute] = []

        def hold_the_setup(route: WebSocketRoute) -> None:
            server = route.connect_to_server()  # the page's frames go on to the server as sent
            routes.append(route)
            server.on_message(lambda message: held.append(message) if routes else None)

        page.route_web_socket(re.compile(r"/ws\b"), hold_the_setup)
        page.goto(server_url.split("?", maxsplit=1)[0] + "?session=gone-0123456789")
        deadline = time.monotonic() + 15
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert held, "the server sent nothing"
        assert page.evaluate("() => window.mixvllm.sessionId") == "gone-0123456789"
        assert page.evaluate("() => window.mixvllm.connected") is False  # open, not attached
        setup = json.loads(held[0])
        assert setup[0] == "setup" and setup[1]["reattached"] is False

        route = routes[0]
        for message in held:
            route.send(message)
        routes.clear()  # from here the server's frames are dropped: only the setup matters
        page.wait_for_function("() => window.mixvllm.connected", timeout=15000)
        assert page.evaluate("() => window.mixvllm.sessionId") == setup[1]["session"]
