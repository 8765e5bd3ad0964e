"""The compose stack for real: `docker compose -f docker-compose.yml -f docker-compose.cpu.yml
up --wait` on the images `make compose-test` built, then Chromium on the terminal container's
published page, a streamed answer from the model-server container, and `down -v` leaving
nothing behind. Needs a Docker engine (DOCKER_HOST); `make compose-test` starts one."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import require
from tests.embedded_server import free_port

from .browser_support import (
    BUFFER_TEXT,
    buffer_text,
    chromium,
    collect_problems,
    type_line,
    wait_connected,
    wait_for_js,
    wait_for_text,
)
from .compose_stacks import DOCKER, Stack, docker_available, timed

pytestmark = [pytest.mark.docker, pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

FILES = ("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml")
MODEL = "smollm2-135m-instruct"
ANSWER_TIMEOUT_MS = 180_000
FOOTER = "tok/s"  # chat's footer after every finished answer


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require(docker_available(), f"no Docker engine with Compose v2 ({DOCKER}; make compose-test)")
    port = free_port()
    token = "ci-" + secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "VLLM_API_KEY": secrets.token_urlsafe(24),
        "MIXVLLM_TERMINAL_TOKEN": token,
        "TERMINAL_PUBLISH_PORT": str(port),
        "MODEL_SERVER_PUBLISH_PORT": str(free_port()),
    }
    s = Stack(f"mixvllm-ci-{secrets.token_hex(3)}", FILES, f"http://127.0.0.1:{port}/", token, env)
    started = time.monotonic()
    up = s.compose("up", "--wait", "--no-build", timeout=400)
    timed("compose up --wait", started)
    try:
        assert up.returncode == 0, up.stdout + up.stderr + s.compose("logs").stdout
        yield s
    finally:
        started = time.monotonic()
        down = s.compose("down", "-v", "--remove-orphans", "--timeout", "20")
        timed("compose down -v", started)
        assert down.returncode == 0, down.stdout + down.stderr
        assert s.leftovers() == []


# Pid, uid and command line of every process in the container.
LIST_PROCESSES = """
import pathlib
for p in pathlib.Path("/proc").glob("[0-9]*"):
    try:
        uid = (p / "status").read_text().split("Uid:")[1].split()[0]
        cmd = (p / "cmdline").read_bytes().replace(b"\\0", b" ").decode()
    except (OSError, IndexError):
        continue
    print(p.name, uid, cmd)
"""


def _check_sessions_are_chat(stack: Stack) -> None:
    """The session runs as chat (10002), which cannot reach the server's secrets or signal it."""
    listed = stack.compose("exec", "-T", "terminal-server", "python", "-c", LIST_PROCESSES)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split(" ", 2) for line in listed.stdout.splitlines() if line.count(" ") >= 2]
    sessions = [(pid, uid) for pid, uid, cmd in rows if "mixvllm-session" in cmd]
    assert sessions, listed.stdout
    assert {uid for _, uid in sessions} == {"10002"}, listed.stdout
    server = [pid for pid, _, cmd in rows if "mixvllm-terminal" in cmd]
    assert server, listed.stdout
    for target in ("1", server[0]):
        as_chat = stack.compose(
            "exec", "-T", "-u", "10002", "terminal-server", "sh", "-c",
            f"cat /proc/{target}/environ; kill -0 {target}",
        )  # fmt: skip
        assert stack.token not in as_chat.stdout
        assert "Permission denied" in as_chat.stderr, as_chat.stderr
        assert "not permitted" in as_chat.stderr, as_chat.stderr


def test_the_browser_gets_a_streamed_answer_from_the_containers(stack: Stack) -> None:
    ps = stack.compose("ps", "--format", "{{.Service}} {{.Health}}")
    assert "model-server healthy" in ps.stdout, ps.stdout
    # Its HEALTHCHECK works on the hardened container (read-only root, no capabilities).
    assert "terminal-server healthy" in ps.stdout, ps.stdout
    # The engine serves the Q8_0 copy the image's build made: nothing converted at start.
    engine_log = stack.logs("model-server")
    assert ".Q8_0.gguf" in engine_log and "writing a Q8_0 copy" not in engine_log, engine_log
    started = time.monotonic()
    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        problems = collect_problems(page)
        page.goto(f"{stack.url}?token={stack.token}")
        wait_connected(page)
        # Named after the published port, not the container's 8888.
        port = stack.url.rstrip("/").rsplit(":", 1)[1]
        assert f"mixvllm_token_{port}" in {c["name"] for c in page.context.cookies()}
        # The session's auto-started chat found the model-server container by its name.
        wait_for_text(page, "Connected to", timeout_ms=60_000)
        wait_for_text(page, f"model {MODEL}")
        page.wait_for_function(
            "() => document.getElementById('statusbar').dataset.state === 'ready'",
            timeout=60_000,
        )
        assert MODEL in page.locator("#statusbar").inner_text()

        question = "Describe a lighthouse in a few sentences."
        type_line(page, question)
        wait_for_js(
            page,
            f"""(q) => {{
                const text = ({BUFFER_TEXT})();
                const at = text.lastIndexOf(q);
                return at >= 0 && text.slice(at + q.length).replace(/\\s/g, "").length >= 20;
            }}""",
            question,
            ANSWER_TIMEOUT_MS,
        )
        # Streamed: words are on screen before the footer that ends every answer.
        streaming = FOOTER not in buffer_text(page).split(question, 1)[1]
        wait_for_text(page, FOOTER, timeout_ms=ANSWER_TIMEOUT_MS)
        answer = buffer_text(page).split(question, 1)[1]
        assert len("".join(answer.split())) > 40, answer
        assert streaming, "the answer arrived whole: nothing streamed"
        assert problems == []
        _check_sessions_are_chat(stack)  # while the page's session lives
    timed("browser: page, chat, streamed answer", started)
