"""`--auth pam` in Chromium: alice and bob log in on the login page from two browser contexts
(real PAM, real accounts in a throwaway namespace); each gets a session as their own account,
neither reaches the other's by URL, API or WebSocket; the share button sends the CSRF token,
and logout sends the page back to the login form. The login page is saved as a screenshot at
device scale factor 1."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.team_support import PamStack, pam_stack, require_pamela

from .browser_support import (
    SETUP_OF,
    STATUS_OF,
    chromium,
    collect_problems,
    log_in,
    whoami,
)

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("MIXVLLM_SHOTS", "/tmp/team-shots"))


@pytest.fixture(scope="module")
def stack() -> Iterator[PamStack]:
    require_pamela()
    with pam_stack() as parts:
        yield parts


def test_the_login_page_in_chromium(stack: PamStack) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 900, "height": 600}, device_scale_factor=1)
        problems = collect_problems(page)
        page.goto(stack.url + "login")
        page.fill("#user", "alice")
        page.fill("#password", "not-her-password")
        page.click("#submit")
        page.wait_for_selector("#message:not(:empty)")
        assert page.inner_text("#message") == "Wrong user name or password."
        assert page.input_value("#user") == "alice"  # kept; the password is not
        assert page.input_value("#password") == ""
        box = page.locator("#login").bounding_box()
        assert box is not None and box["x"] > 0 and box["y"] > 0  # centred, nothing clipped
        assert box["x"] + box["width"] < 900 and box["y"] + box["height"] < 600
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "login.png"))
        # The only problem is the form's own 401 answer, as Chromium reports it.
        assert all("401" in problem for problem in problems), problems


def test_two_users_log_in_on_the_page_and_cannot_reach_each_others_sessions(
    stack: PamStack,
) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        SHOTS.mkdir(parents=True, exist_ok=True)
        alice = log_in(browser, stack.url, stack.alice)
        hers = alice.evaluate("() => window.mixvllm.sessionId")
        assert whoami(alice, "WHO") == "alice"
        assert alice.is_visible("#logout")
        button = alice.locator("#logout").bounding_box()
        assert button is not None and button["x"] + button["width"] <= 900  # not clipped
        alice.screenshot(path=str(SHOTS / "login-terminal.png"))

        # Bob follows a link to Alice's session: the login page, then a session of his own.
        bob = log_in(browser, stack.url, stack.bob, f"?session={hers}")
        his = bob.evaluate("() => window.mixvllm.sessionId")
        assert his != hers and whoami(bob, "BOB") == "bob"
        csrf = bob.evaluate("() => document.querySelector('meta[name=mixvllm-csrf]').content")
        for path, method in ((f"api/share?session={hers}", "GET"),
                             (f"api/share?session={hers}", "POST"),
                             (f"api/chat?session={hers}", "GET")):  # fmt: skip
            assert bob.evaluate(STATUS_OF, [path, method, csrf]) == 404, (path, method)
        setup = bob.evaluate(SETUP_OF, f"session={hers}")
        assert setup["session"] not in (hers, his) and setup["reattached"] is False

        # Alice's share button works (the page sends her CSRF token); without it, refused.
        assert alice.evaluate(STATUS_OF, [f"api/share?session={hers}", "POST", ""]) == 403
        alice.click("#share")
        alice.wait_for_function("() => document.getElementById('share-url').value !== ''")
        assert "view/?share=" in alice.input_value("#share-url")

        # Logout: back to the login form, in one navigation: the sockets the server closes do not
        # send the page probing or reloading its old URL (a second navigation aborts the first).
        # The page's requests are refused from then on.
        after_logout: list[str] = []
        bob.on("request", lambda request: after_logout.append(request.url))
        bob.click("#logout")
        bob.wait_for_url(re.compile(r"/login(\?next=.*)?$"))
        bob.wait_for_selector("#login")
        assert not [url for url in after_logout if "session=" in url], after_logout
        assert bob.evaluate(STATUS_OF, ["api/status", "GET", ""]) == 401
        assert alice.evaluate("() => window.mixvllm.connected") is True
        assert whoami(alice, "AGAIN") == "alice"
