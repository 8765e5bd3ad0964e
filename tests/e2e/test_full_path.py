"""The whole path a user lives in, with real parts only: Chromium -> terminal server -> PTY ->
`chat` -> the embedded llama.cpp model server, and back.

Set MIXVLLM_SCREENSHOT=docs/screenshot.png to refresh the README's screenshot from a real run.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page, sync_playwright

from model_server import health
from model_server.up import stop_process
from tests.conftest import require
from tests.embedded_server import EmbeddedServer
from tests.embedded_server import installed as embedded_installed
from tests.support import free_port, isolated_home

from .browser_support import (
    BUFFER_TEXT,
    ROOT,
    TEST_SHELL,
    buffer_text,
    chromium,
    collect_problems,
    terminal_server,
    type_line,
    wait_connected,
    wait_for_chars_after,
    wait_for_js,
    wait_for_text,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.embedded,
    pytest.mark.slow,
    pytest.mark.timeout(300),  # real CPU inference on a shared 2-core machine
]

TOKEN = "e2e-" + secrets.token_urlsafe(12)
CHAT = str(Path(sys.executable).with_name("chat"))
ANSWER_TIMEOUT_MS = 120_000  # a 300-token answer from a CPU model on a busy 2-core machine
FOOTER = "tok/s"  # chat's footer after every finished answer
VIEWPORT_WIDTH, VIEWPORT_HEIGHT = 1100, 700


def session_env(tmp: Path, url: str, key: str) -> dict[str, str]:
    """What the terminal server (and so each session) runs with: private home, real server."""
    return {
        "MODEL_SERVER_URL": url,
        "VLLM_API_KEY": key,
        **isolated_home(tmp),
    }


@contextmanager
def chat_terminal(tmp: Path, url: str, key: str) -> Iterator[str]:
    """A terminal server whose sessions auto-start chat against `url`; yields the page URL."""
    chat_command = f"{CHAT} --max-tokens 300 --timeout 60"
    args = ["--token", TOKEN, "--shell", TEST_SHELL, "--chat-command", chat_command]
    with terminal_server(args, session_env(tmp, url, key)) as (page_url, _):
        yield f"{page_url}?token={TOKEN}"


@contextmanager
def chat_page(tmp: Path, url: str, key: str) -> Iterator[tuple[Page, list[str]]]:
    """A browser tab on a fresh session whose auto-started chat is connected to `url`;
    yields the page and the problems (page errors, failed responses) seen so far."""
    with chat_terminal(tmp, url, key) as page_url, sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": VIEWPORT_WIDTH, "height": VIEWPORT_HEIGHT})
        problems = collect_problems(page)
        page.goto(page_url)
        wait_connected(page)
        wait_for_text(page, "Connected to", timeout_ms=60000)
        yield page, problems


def count(page: Page, needle: str) -> int:
    return buffer_text(page).count(needle)


def wait_for_count(page: Page, needle: str, at_least: int, timeout_ms: int) -> None:
    wait_for_js(
        page,
        f"([needle, n]) => ({BUFFER_TEXT})().split(needle).length - 1 >= n",
        [needle, at_least],
        timeout_ms,
    )


def wait_for_status(page: Page, state: str, timeout_ms: int = 30000) -> str:
    page.wait_for_function(
        "(state) => document.getElementById('statusbar').dataset.state === state",
        arg=state,
        timeout=timeout_ms,
    )
    text: str = page.locator("#statusbar").inner_text()
    return text


def ask(page: Page, question: str) -> None:
    type_line(page, question)


def answer_started(page: Page, question: str, min_chars: int = 40) -> None:
    """Wait until at least `min_chars` visible characters follow the question on screen."""
    wait_for_chars_after(page, question, min_chars, ANSWER_TIMEOUT_MS)


def test_chat_streams_a_real_answer_and_a_reload_mid_answer_reattaches(
    embedded_model_server: EmbeddedServer, tmp_path: Path
) -> None:
    server = embedded_model_server
    with chat_page(tmp_path, server.base_url, server.api_key) as (page, problems):
        wait_for_text(page, f"model {server.model}")
        session = page.evaluate("() => window.mixvllm.sessionId")

        status = wait_for_status(page, "ready")
        assert server.model in status

        question = "Write a long story about a lighthouse keeper and a storm."
        ask(page, question)
        answer_started(page, question)
        streaming_at_reload = count(page, FOOTER) == 0
        page.reload()

        wait_connected(page)
        assert page.evaluate("() => window.mixvllm.sessionId") == session
        wait_for_text(page, question)  # the scrollback came back
        wait_for_count(page, FOOTER, 1, ANSWER_TIMEOUT_MS)  # and the answer finished
        assert streaming_at_reload, "the answer had finished before the reload: nothing tested"
        after = buffer_text(page).split(question, 1)[1]
        assert len("".join(after.split())) > 100, after

        # The bar has its own row: inside the window, below the terminal, not over it.
        wait_for_status(page, "ready")
        bar = page.locator("#statusbar").bounding_box()
        screen = page.locator("#terminal .xterm-screen").bounding_box()
        assert bar is not None and screen is not None
        assert bar["y"] + bar["height"] <= VIEWPORT_HEIGHT + 0.5
        assert screen["y"] + screen["height"] <= bar["y"] + 0.5

        shot = os.environ.get("MIXVLLM_SCREENSHOT")
        page.screenshot(path=str(ROOT / shot) if shot else str(tmp_path / "session.png"))
        assert problems == []


def test_leaving_chat_lands_in_a_shell_where_chat_works_again(
    embedded_model_server: EmbeddedServer, tmp_path: Path
) -> None:
    server = embedded_model_server
    with chat_page(tmp_path, server.base_url, server.api_key) as (page, _):
        type_line(page, "/exit")
        type_line(page, "echo shell-$((40+2))")
        wait_for_text(page, "shell-42")

        type_line(page, 'chat --max-tokens 40 "Say hello."; echo chat-exit-$?')
        wait_for_text(page, "chat-exit-0", timeout_ms=ANSWER_TIMEOUT_MS)
        assert count(page, FOOTER) >= 1


INJECTIONS = [
    "x'; touch {marker}-a; echo '",
    'x"; touch {marker}-b; echo "',
    "$(touch {marker}-c)",
    "`touch {marker}-d`",
    "x\ntouch {marker}-e",
    "x; touch {marker}-f",
]


@pytest.mark.parametrize("param", ["model", "system"])
def test_url_parameters_reach_chat_verbatim_and_never_a_shell(
    embedded_model_server: EmbeddedServer, tmp_path: Path, param: str
) -> None:
    server = embedded_model_server
    marker = tmp_path / f"pwned-{param}"
    with (
        chat_terminal(tmp_path, server.base_url, server.api_key) as url,
        sync_playwright() as p,
        chromium(p) as browser,
    ):
        context = browser.new_context(viewport={"width": 1000, "height": 600})
        first = context.new_page()
        first.goto(url)  # swaps the token for the cookie
        wait_connected(first)
        for n, template in enumerate(INJECTIONS):
            value = template.format(marker=marker)
            page = context.new_page()
            page.goto(url.split("?")[0] + "?" + urlencode({param: value}))
            wait_connected(page)
            if param == "model":
                # No such model: chat names what is served, exits, and the shell follows.
                wait_for_text(page, server.model, timeout_ms=60000)
            else:
                wait_for_text(page, f"model {server.model}", timeout_ms=60000)
                type_line(page, "/system")
                wait_for_text(page, "System prompt:")
                shown = buffer_text(page).split("System prompt:", 1)[1]
                first_line = value.split("\n", 1)[0]
                assert first_line in shown.replace("\n", ""), (value, shown)
                type_line(page, "/exit")
            type_line(page, f"echo alive-{n}")
            wait_for_text(page, f"alive-{n}")
            page.close()
    leftovers = sorted(path.name for path in tmp_path.glob("pwned-*"))
    assert leftovers == [], f"a URL parameter reached a shell: {leftovers}"


Action = Callable[[], None]


@contextmanager
def restartable_model_server(tmp: Path) -> Iterator[tuple[str, str, tuple[Action, Action]]]:
    """The real embedded engine on a fixed port, which the test can stop and start again."""
    port = free_port()
    key = secrets.token_urlsafe(16)
    env = {**os.environ, "VLLM_API_KEY": key, "MIXVLLM_STATE_DIR": str(tmp / "model-state")}
    cmd = [sys.executable, "-m", "model_server", "--profile", "embedded"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    base_url = f"http://127.0.0.1:{port}/v1"
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        log = (tmp / f"model-{len(procs)}.log").open("wb")
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        log.close()
        procs.append(proc)
        health.wait(base_url, timeout=90, api_key=key, interval=0.2,
                    alive=lambda: proc.poll() is None)  # fmt: skip

    def stop() -> None:
        stop_process(procs[-1])

    start()
    try:
        yield base_url, key, (start, stop)
    finally:
        for proc in procs:
            stop_process(proc)


def test_model_server_outage_mid_chat_keeps_the_conversation(tmp_path: Path) -> None:
    ok, why = embedded_installed()
    require(ok, why)
    with (
        restartable_model_server(tmp_path) as (base_url, key, (start, stop)),
        chat_page(tmp_path, base_url, key) as (page, _),
    ):
        wait_for_status(page, "ready")

        ask(page, "Name one colour.")
        wait_for_count(page, FOOTER, 1, ANSWER_TIMEOUT_MS)

        stop()
        outage = wait_for_status(page, "unreachable")
        assert "unreachable" in outage
        errors_before = count(page, "cannot reach the model server")
        ask(page, "Name one animal.")
        wait_for_count(page, "cannot reach the model server", errors_before + 1, 60000)
        assert "Traceback" not in buffer_text(page)

        start()
        wait_for_status(page, "ready", timeout_ms=30000)
        ask(page, "Name one fruit.")
        wait_for_count(page, FOOTER, 2, ANSWER_TIMEOUT_MS)

        type_line(page, "/history")  # the conversation from before the outage is still there
        wait_for_text(page, "[user] Name one colour.")
        wait_for_text(page, "[user] Name one fruit.")
