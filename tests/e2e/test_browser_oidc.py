"""`--auth oidc` in Chromium: the login page's "Sign in with …" button, the real provider's
form (panva's oidc-provider), and back to a terminal session that runs as the user's account,
made on this first login. The login page is saved as a screenshot at device scale factor 1."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.oidc_support import OidcStack, oidc_stack

from .browser_support import (
    BUFFER_TEXT,
    buffer_text,
    chromium,
    collect_problems,
    type_line,
    wait_connected,
    wait_for_js,
)

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("MIXVLLM_SHOTS", "/tmp/team-shots"))


@pytest.fixture(scope="module")
def stack() -> Iterator[OidcStack]:
    with oidc_stack({}) as parts:
        yield parts


def test_sign_in_with_the_provider_in_chromium(stack: OidcStack) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 900, "height": 600}, device_scale_factor=1)
        problems = collect_problems(page)
        page.goto(stack.url + "?session=none")
        page.wait_for_url(re.compile(r"/login\?next="))
        button = page.locator("#sign-in")
        assert button.inner_text() == "Sign in with 127.0.0.1"
        box = page.locator("#login").bounding_box()
        assert box is not None and box["x"] > 0 and box["y"] > 0  # centred, nothing clipped
        assert box["x"] + box["width"] < 900 and box["y"] + box["height"] < 600
        inner = button.bounding_box()
        assert inner is not None and inner["height"] >= 24  # the label is not cut
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "oidc.png"))
        assert not problems, problems  # the provider's own page (its fonts, favicon) aside

        button.click()  # off to the provider's own login form
        page.wait_for_selector("input[name=login]")
        page.fill("input[name=login]", "alice")
        page.fill("input[name=password]", "any password")
        # The page she lands on, before its script puts the new session's id in the address
        # (which it does once the socket's setup arrives, at any time after it opened).
        landed: list[str] = []
        page.on("framenavigated", lambda f: landed.append(f.url) if f == page.main_frame else None)
        page.click("button[type=submit]")
        wait_connected(page)
        assert stack.url + "?session=none" in landed, landed  # where she was going
        type_line(page, 'echo "WHO<$(id -un) $(id -u)>"')
        pattern = r"WHO<([a-z]+ [0-9]+)>"
        wait_for_js(page, f"(re) => new RegExp(re).test(({BUFFER_TEXT})())", pattern, 15000)
        match = re.search(pattern, buffer_text(page))
        assert match is not None and match.group(1) == "alice 23000"  # made on this login
        ours = [p for p in problems if stack.url in p or p.startswith("pageerror")]
        assert not ours, ours
