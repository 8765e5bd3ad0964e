"""A share link in Chromium: the owner shares, another browser watches, the owner revokes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import sync_playwright

from .browser_support import (
    TEST_SHELL,
    buffer_text,
    chromium,
    collect_problems,
    terminal_server,
    type_line,
    wait_connected,
    wait_for_text,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def server_url() -> Iterator[str]:
    with terminal_server(["--no-autostart-chat", "--shell", TEST_SHELL]) as (url, _):
        yield url


def test_a_viewer_watches_live_cannot_type_and_sees_the_share_end(server_url: str) -> None:
    with sync_playwright() as p, chromium(p) as browser:
        owner = browser.new_context(viewport={"width": 900, "height": 600}).new_page()
        owner_problems = collect_problems(owner)
        owner.goto(server_url)
        wait_connected(owner)
        type_line(owner, "echo before'-'share")
        wait_for_text(owner, "before-share")

        owner.click("#share")
        owner.locator("#share-panel").wait_for(state="visible", timeout=10000)
        link = owner.locator("#share-url").input_value()
        assert "/view/?share=" in link, link
        assert owner.locator("#share-status").inner_text().endswith("0 viewers")

        # Another browser context: no owner cookie, only the link.
        viewer_context = browser.new_context(viewport={"width": 900, "height": 600})
        viewer = viewer_context.new_page()
        viewer_problems = collect_problems(viewer)
        viewer.goto(link)
        wait_connected(viewer)
        assert viewer.evaluate("() => window.mixvllm.viewer") is True
        assert "share=" not in viewer.url  # the token left the address bar
        wait_for_text(viewer, "before-share")  # the replay
        owner.wait_for_function(
            "() => document.getElementById('share-status').textContent.endsWith(' 1 viewer')",
            timeout=10000,
        )
        for control in ("#new-session", "#restart", "#share"):
            assert not viewer.locator(control).is_visible(), control

        type_line(owner, "echo live'-'output")
        wait_for_text(viewer, "live-output")

        # Typing in the viewer does nothing: not in the session, and no view-only close.
        type_line(viewer, "echo typed'-'by'-'viewer")
        type_line(owner, "echo owner'-'again")
        wait_for_text(viewer, "owner-again")
        assert "typed-by-viewer" not in buffer_text(owner)
        assert "typed" not in buffer_text(viewer).replace("echo", "")
        assert viewer.evaluate("() => window.mixvllm.connected") is True
        assert viewer.locator("#overlay").is_hidden()
        assert owner.locator("#overlay").is_hidden()  # the viewer did not take the session over

        # The share cookie opens nothing of the owner's.
        base = link.split("/view/")[0]
        for path in (
            "/",
            "/api/status",
            f"/api/share?session={owner.evaluate('() => window.mixvllm.sessionId')}",
        ):
            assert viewer_context.request.get(base + path).status == 403, path

        owner.click("#share-stop")
        viewer.locator("#overlay").wait_for(state="visible", timeout=10000)
        assert "share has ended" in viewer.locator("#overlay-text").inner_text()
        assert viewer.locator("#overlay-action").is_hidden()
        owner.locator("#share-status").wait_for(state="hidden", timeout=10000)
        assert owner.evaluate("() => window.mixvllm.connected") is True
        assert owner_problems == []
        assert viewer_problems == []
