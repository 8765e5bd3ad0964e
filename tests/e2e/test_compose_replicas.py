"""Replicas behind vLLM's router, for real: docker-compose.yml + deploy/compose.replicas.yml
(two model servers, the router, the terminal) on CI's CPU stand-in (real vLLM CPU build in
both replicas, docker/ci/compose.replicas-cpu.yml), driven through the browser page.

One replica is killed while it streams an answer: the answer ends in one line with its text
kept, `/retry` is answered by the other replica, the status bar counts the replicas up, and
the killed replica, started again, gets the conversation back (consistent hashing on the
X-Session-ID chat sends). The timeline, as the page showed it, goes to stderr.
Needs a Docker engine and the images `make compose-test` builds."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.conftest import require
from tests.support import free_port
from tests.vllm_cpu import MODEL_DIR, VLLM_VENV, installed

from .browser_support import (
    BUFFER_TEXT,
    buffer_text,
    chromium,
    collect_problems,
    type_line,
    wait_connected,
    wait_for_chars_after,
    wait_for_js,
    wait_for_text,
)
from .compose_stacks import DOCKER, Stack, docker_available
from .test_compose_stack import FOOTER

pytestmark = [pytest.mark.docker, pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1200)]

FILES = ("-f", "docker-compose.yml", "-f", "deploy/compose.replicas.yml",
         "-f", "docker/ci/compose.replicas-cpu.yml")  # fmt: skip
REPLICAS = ("model-server", "model-server-1")
IMAGES = ("mixvllm-model-server:ci-standin", "mixvllm-router:latest", "mixvllm-terminal:latest")
UP_S = 600
ANSWER_MS = 240_000
# The router logs every pick: "... key='header:x-session-id:<key>' -> worker='http://<host>:8000'"
ROUTED = re.compile(r"key='header:x-session-id:[0-9a-f]+' -> worker='http://([\w-]+):8000'")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What the router logs when a request to a replica fails and its circuit breaker opens.
BREAKER_TRIPPED = re.compile(
    r"ERROR .*Failed to send|Circuit breaker state transition: \w+ -> open"
)


def routed_to(stack: Stack) -> list[str]:
    """The replica of every chat request the router forwarded, oldest first."""
    return ROUTED.findall(ANSI.sub("", stack.logs("router")))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require(docker_available(), f"no Docker engine with Compose v2 ({DOCKER}; make compose-test)")
    ok, why = installed()
    require(ok, why)
    for image in IMAGES:
        found = subprocess.run(
            [DOCKER, "image", "inspect", image], capture_output=True, check=False
        )
        require(found.returncode == 0, f"no {image} (make compose-test builds it)")
    site = sorted(VLLM_VENV.glob("lib/python3*/site-packages"))
    port = free_port()
    token = "ci-" + secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "VLLM_API_KEY": secrets.token_urlsafe(24),
        "MIXVLLM_TERMINAL_TOKEN": token,
        "TERMINAL_PUBLISH_PORT": str(port),
        "MODEL_SERVER_PUBLISH_PORT": str(free_port()),
        "VLLM_CPU_SITE_PACKAGES": str(site[0]),
        "VLLM_CPU_MODEL_DIR": str(MODEL_DIR),
    }
    s = Stack(
        f"mixvllm-ci-rep-{secrets.token_hex(3)}", FILES, f"http://127.0.0.1:{port}/", token, env
    )
    started = time.monotonic()
    up = s.compose("up", "--wait", "--no-build", timeout=UP_S + 60)
    print(f"compose-test: replicas up --wait: {time.monotonic() - started:.0f} s", file=sys.stderr)
    try:
        assert up.returncode == 0, up.stdout + up.stderr + s.compose("logs").stdout[-6000:]
        yield s
    finally:
        down = s.compose("down", "-v", "--remove-orphans", "--timeout", "20")
        assert down.returncode == 0, down.stdout + down.stderr
        label = f"label=com.docker.compose.project={s.project}"
        left = subprocess.run(
            [DOCKER, "ps", "-aq", "--filter", label], capture_output=True, text=True, check=True
        ).stdout
        assert left == ""


def _status(page: Page, want: str, timeout_ms: int) -> None:
    page.wait_for_function(
        "(want) => document.getElementById('statusbar').textContent.includes(want)",
        arg=want,
        timeout=timeout_ms,
    )


def _answer_streams(page: Page, after: str, chars: int) -> None:
    """At least `chars` visible characters after the last `after` on screen."""
    wait_for_chars_after(page, after, chars, ANSWER_MS)


def _router_lines(stack: Stack, start: int) -> str:
    """The router's log from `start` (characters), without its per-request debug chatter."""
    lines = ANSI.sub("", stack.logs("router")[start:]).splitlines()
    return "\n".join(line for line in lines if "CONSISTENT_HASH_DEBUG" not in line)[-6000:]


def _footers(page: Page) -> int:
    return buffer_text(page).count(FOOTER)


def test_a_killed_replica_fails_over_and_comes_back(stack: Stack) -> None:
    timeline: list[str] = []
    t0 = time.monotonic()

    def mark(event: str) -> None:
        timeline.append(f"{time.monotonic() - t0:7.1f} s  {event}")

    with sync_playwright() as p, chromium(p) as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        problems = collect_problems(page)
        page.goto(f"{stack.url}?token={stack.token}")
        wait_connected(page)
        wait_for_text(page, "Connected to", timeout_ms=60_000)
        _status(page, "2/2 replicas up", 60_000)
        mark("page: status bar 'model server: ready ... 2/2 replicas up'")

        question = "Write a long story about a lighthouse keeper and a storm."
        type_line(page, question)
        _answer_streams(page, question, 30)
        routed = routed_to(stack)
        assert routed, stack.compose("logs", "router").stdout[-3000:]
        serving = routed[-1]
        other = next(r for r in REPLICAS if r != serving)
        before_kill = buffer_text(page).split(question, 1)[1]
        assert FOOTER not in before_kill, "the answer ended before the kill: make it longer"
        kill = stack.compose("kill", serving)
        assert kill.returncode == 0, kill.stderr
        mark(f"{serving} killed (SIGKILL) mid-answer")

        wait_for_text(page, "partial answer was kept", timeout_ms=60_000)
        mark("page: the answer ends in one line, 'the partial answer was kept (try /retry)'")
        after = buffer_text(page).split(question, 1)[1]
        kept = "".join(before_kill.split())[:30]
        assert kept in "".join(after.split()), "the partial answer is gone"

        footers, hints = _footers(page), buffer_text(page).count("/retry")
        type_line(page, "/retry")
        retried = time.monotonic()
        wait_for_js(page, f"(n) => ({BUFFER_TEXT})().split('/retry').length - 1 > n", hints, 10_000)
        # What the screen holds after the typed line before the answer (the prompt's toolbar,
        # a notice) is not the answer: wait for 20 more characters than that.
        shown = len("".join(buffer_text(page).rsplit("/retry", 1)[1].split()))
        _answer_streams(page, "/retry", shown + 20)
        first_word = time.monotonic() - retried
        mark(f"page: /retry streams from {other} ({first_word:.1f} s to its first words)")
        _status(page, "1/2 replicas up", 30_000)
        mark("page: status bar '1/2 replicas up'")
        page.wait_for_function(
            f"(n) => ({BUFFER_TEXT})().split({FOOTER!r}).length - 1 > n",
            arg=footers,
            timeout=ANSWER_MS,
        )
        mark("page: the retried answer finished")
        assert routed_to(stack)[-1] == other
        assert first_word < 30, f"/retry took {first_word:.1f} s to answer"

        start = stack.compose("start", serving)
        assert start.returncode == 0, start.stderr
        mark(f"{serving} started again")
        _status(page, "2/2 replicas up", UP_S * 1000)
        mark("page: status bar '2/2 replicas up'")
        # The conversation's key hashes to its replica again once the router lets requests
        # through to it: healthy (the status bar's 2/2) and its circuit breaker, opened by the
        # kill, not open again. When the restarted replica fails the router's first request
        # to it, the breaker reopens and that one turn is answered by the other replica; the
        # router's log says so, and the next turn must be back.
        for turn in (1, 2):
            count = len(routed_to(stack))
            log_mark = len(stack.logs("router"))
            footers = _footers(page)
            type_line(page, "/retry")
            page.wait_for_function(
                f"(n) => ({BUFFER_TEXT})().split({FOOTER!r}).length - 1 > n",
                arg=footers,
                timeout=ANSWER_MS,
            )
            answered_by = routed_to(stack)[count:][-1]
            mark(f"page: /retry answered by {answered_by}")
            if answered_by == serving:
                break
            router_log = _router_lines(stack, log_mark)
            assert turn == 1, router_log
            assert BREAKER_TRIPPED.search(router_log), router_log
        assert problems == []
    print("compose-test: failover timeline, as the page showed it:", file=sys.stderr)
    for line in timeline:
        print(f"compose-test:   {line}", file=sys.stderr)
