"""Team mode with every real part at once: `--auth pam` (real PAM, real accounts in a
throwaway namespace), chat autostarted in each session (the default command, the venv's
`chat --wait 120`), the real embedded model behind the terminal server's pass-through, and
Chromium. Alice and Bob log in on the login page in two browser contexts; each asks chat a
question and sees a streamed answer; each session runs as its own uid, without the model
server's key; Bob cannot reach Alice's session by URL, API or WebSocket; the admin page's
API counts both users' tokens. A screenshot of each user's page with the answer is saved."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.embedded_server import EmbeddedServer
from tests.team_support import PamStack, pam_stack, require_pamela

from .browser_support import (
    BUFFER_TEXT,
    SETUP_OF,
    STATUS_OF,
    buffer_text,
    chromium,
    log_in,
    type_line,
    wait_for_js,
    wait_for_text,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.embedded,
    pytest.mark.slow,
    pytest.mark.timeout(600),  # two real CPU answers on a shared 2-core machine
]

SHOTS = Path(os.environ.get("MIXVLLM_SHOTS", "/tmp/team-shots"))
ANSWER_TIMEOUT_MS = 180_000
FOOTER = "tok/s"  # chat's footer after every finished answer
QUESTION = "Name one colour. Reply with one word."


@pytest.fixture(scope="module")
def stack(embedded_model_server: EmbeddedServer) -> Iterator[PamStack]:
    require_pamela()
    model = embedded_model_server
    env = {"VLLM_API_KEY": model.api_key, "MODEL_SERVER_URL": model.base_url}
    with pam_stack("--admin-users", "alice", env=env, chat=True) as parts:
        yield parts


def _ask(page: Page) -> None:
    wait_for_text(page, "Connected to", timeout_ms=120_000)  # chat's banner
    assert "/model" in buffer_text(page)  # the pass-through, not the model server
    type_line(page, QUESTION)


def _wait_answer(page: Page) -> None:
    wait_for_js(page, f"(f) => ({BUFFER_TEXT})().includes(f)", FOOTER, ANSWER_TIMEOUT_MS)
    text = buffer_text(page)
    asked = text.index("> " + QUESTION) + len(QUESTION) + 2  # at chat's prompt
    answer = text[asked : text.index(FOOTER, asked)]
    assert re.search(r"[A-Za-z]", answer), text  # the model said something


def _leave_chat(page: Page, tag: str) -> tuple[str, int, int]:
    """Ctrl-D ends chat and the session's shell follows; it says who it runs as."""
    page.click("#terminal")
    page.keyboard.press("Control+D")
    wait_for_text(page, "bash-", timeout_ms=30_000)  # bash's default prompt
    type_line(page, f'echo "{tag}<$(id -un):$(id -u):$$>"')
    pattern = rf"{tag}<([a-z]+):(\d+):(\d+)>"
    wait_for_js(page, f"(re) => new RegExp(re).test(({BUFFER_TEXT})())", pattern, 15000)
    match = re.search(pattern, buffer_text(page))
    assert match is not None
    return match.group(1), int(match.group(2)), int(match.group(3))


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def test_two_users_chat_with_the_real_model_and_cannot_reach_each_other(
    stack: PamStack, embedded_model_server: EmbeddedServer
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p, chromium(p) as browser:
        alice = log_in(browser, stack.url, stack.alice)
        hers = alice.evaluate("() => window.mixvllm.sessionId")
        # Bob follows a link to Alice's session: the login page, then a session of his own.
        bob = log_in(browser, stack.url, stack.bob, f"?session={hers}")
        his = bob.evaluate("() => window.mixvllm.sessionId")
        assert his != hers

        _ask(alice)
        _ask(bob)
        _wait_answer(alice)
        _wait_answer(bob)
        alice.screenshot(path=str(SHOTS / "team-chat-alice.png"))
        bob.screenshot(path=str(SHOTS / "team-chat-bob.png"))

        # Neither session is the other's: not Alice's by API or by WebSocket for Bob.
        csrf = bob.evaluate("() => document.querySelector('meta[name=mixvllm-csrf]').content")
        for path, method in ((f"api/share?session={hers}", "GET"),
                             (f"api/share?session={hers}", "POST"),
                             (f"api/chat?session={hers}", "GET"),
                             (f"api/upload?session={hers}&name=x.txt", "POST"),
                             (f"api/download?session={hers}&ticket=x", "GET")):  # fmt: skip
            assert bob.evaluate(STATUS_OF, [path, method, csrf]) == 404, (path, method)
        setup = bob.evaluate(SETUP_OF, f"session={hers}")
        assert setup["session"] not in (hers, his) and setup["reattached"] is False
        assert bob.evaluate(STATUS_OF, ["api/admin/state", "GET", ""]) == 403

        # The model's use is counted per user (alice is the admin).
        state = alice.evaluate("async () => (await fetch('api/admin/state')).json()")
        tokens = {u["name"]: u["tokens"] for u in state["users"]}
        for name in ("alice", "bob"):
            assert tokens[name]["requests"] >= 1, tokens
            assert tokens[name]["prompt_total"] > 0 and tokens[name]["completion_total"] > 0

        # Each session runs as its own account, and neither holds the model server's key.
        for page, who in ((alice, stack.alice), (bob, stack.bob)):
            name, uid, pid = _leave_chat(page, "WHO")
            assert (name, uid) == (who.name, who.uid)
            env = _environment(pid)
            assert embedded_model_server.api_key not in "\0".join(
                f"{k}={v}" for k, v in env.items()
            )
            assert env["VLLM_API_KEY"].startswith(f"mxu.{who.name}."), env["VLLM_API_KEY"][:12]
            assert env["MODEL_SERVER_URL"].endswith("/model"), env["MODEL_SERVER_URL"]
