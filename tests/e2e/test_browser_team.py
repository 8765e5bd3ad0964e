"""Team mode in Chromium: alice and bob log in to nginx (basic auth) from two browser contexts;
each gets a session as their own account, and neither reaches the other's by URL, API or
WebSocket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.team_support import Account, TeamStack, team_stack
from tests.terminal_support import TOKEN

from .browser_support import (
    buffer_text,
    chromium,
    collect_problems,
    wait_connected,
    whoami,
)

pytestmark = pytest.mark.browser

# The session's setup frame, from a WebSocket the page itself opens.
SETUP_OF = """async (query) => await new Promise((resolve, reject) => {
  const ws = new WebSocket(new URL("ws?" + query, location.href).href.replace(/^http/, "ws"));
  ws.onmessage = (e) => { const m = JSON.parse(e.data); if (m[0] === "setup") { ws.close();
    resolve(m[1]); } };
  ws.onerror = () => reject(new Error("websocket failed"));
})"""
STATUS_OF = "async (path) => (await fetch(path, {method: 'GET'})).status"


@pytest.fixture(scope="module")
def stack() -> Iterator[TeamStack]:
    with team_stack(TOKEN) as parts:
        yield parts


def test_two_users_in_two_browsers_cannot_reach_each_others_sessions(stack: TeamStack) -> None:
    with sync_playwright() as p, chromium(p) as browser:

        def login(who: Account) -> Page:
            context = browser.new_context(
                viewport={"width": 900, "height": 600},
                http_credentials={"username": who.name, "password": who.password},
            )
            return context.new_page()

        alice, bob = login(stack.alice), login(stack.bob)
        alice_problems = collect_problems(alice)
        alice.goto(stack.url)
        wait_connected(alice)
        hers = alice.evaluate("() => window.mixvllm.sessionId")
        assert whoami(alice, "WHO") == "alice"

        # Bob opens Alice's session by URL: he gets a new session of his own.
        bob.goto(f"{stack.url}?session={hers}")
        wait_connected(bob)
        his = bob.evaluate("() => window.mixvllm.sessionId")
        assert his != hers
        assert whoami(bob, "BOB") == "bob"
        assert "WHO<alice>" not in buffer_text(bob)
        # ... by API and by a WebSocket of his own making.
        for path in (f"api/share?session={hers}", f"api/chat?session={hers}"):
            assert bob.evaluate(STATUS_OF, path) == 404, path
        setup = bob.evaluate(SETUP_OF, f"session={hers}")
        assert setup["session"] not in (hers, his) and setup["reattached"] is False

        # Alice's tab is still hers and connected: nothing took it over.
        assert alice.evaluate("() => window.mixvllm.connected") is True
        assert whoami(alice, "AGAIN") == "alice"
        assert alice.evaluate(STATUS_OF, f"api/share?session={hers}") == 200
        assert alice_problems == []
