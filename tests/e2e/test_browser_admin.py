"""The admin page in Chromium: alice (an admin) and bob each have a terminal open through nginx
(basic auth); alice's admin page lists both sessions with their processes, and her two clicks
on "end" end bob's session, which his tab reports. Bob gets 403 for the page.

A screenshot at device scale factor 1 goes to $MIXVLLM_SHOTS/admin.png.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.team_support import Account, TeamStack, team_stack
from tests.terminal_support import TOKEN

from .browser_support import chromium, collect_problems, type_line, wait_connected, wait_for_text

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("MIXVLLM_SHOTS", "/tmp/admin-shots"))


@pytest.fixture(scope="module")
def stack() -> Iterator[TeamStack]:
    with team_stack(TOKEN, "--admin-users", "alice") as parts:
        yield parts


def test_the_admin_page_lists_both_users_and_ends_bobs_session(stack: TeamStack) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p, chromium(p) as browser:

        def login(who: Account) -> Page:
            context = browser.new_context(
                viewport={"width": 1100, "height": 420},
                device_scale_factor=1,
                http_credentials={"username": who.name, "password": who.password},
            )
            return context.new_page()

        alice, bob, admin = login(stack.alice), login(stack.bob), login(stack.alice)
        for page in (alice, bob):
            page.goto(stack.url)
            wait_connected(page)
        type_line(bob, "sleep 600 & echo STARTED")
        wait_for_text(bob, "STARTED")
        his = bob.evaluate("() => window.mixvllm.sessionId")
        hers = alice.evaluate("() => window.mixvllm.sessionId")
        shared = bob.evaluate(
            "async (id) => (await fetch('api/share?session=' + id, {method: 'POST'})).status", his
        )
        assert shared == 200

        refused = bob.context.new_page().goto(stack.url + "admin")
        assert refused is not None and refused.status == 403

        problems = collect_problems(admin)
        admin.goto(stack.url + "admin")
        row = f'#sessions tr[data-session="{his}"]'
        admin.wait_for_selector(row)
        admin.wait_for_selector(f'#sessions tr[data-session="{hers}"]')
        cells = admin.locator(f"{row} td").all_inner_texts()
        assert cells[0] == "bob" and cells[1] == his and cells[4] == "open"
        assert int(cells[5]) >= 2  # his shell and its sleep
        assert cells[8] == "0 watching"
        assert admin.locator(f'{row} button[data-action="revoke"]').count() == 1
        users = admin.locator("#users tbody td:first-child").all_inner_texts()
        assert users == ["alice", "bob"]
        assert "signed in as alice" in admin.inner_text("#status")
        admin.screenshot(path=str(SHOTS / "admin.png"))

        button = admin.locator(f'{row} button[data-action="end"]')
        button.click()
        assert button.inner_text() == "end?"  # the first click only asks
        button.click()
        admin.wait_for_selector(row, state="detached")
        bob.wait_for_selector("#overlay:not([hidden])")
        assert bob.inner_text("#overlay-text").startswith("Session ended")
        assert alice.evaluate("() => window.mixvllm.connected") is True
        assert problems == []
