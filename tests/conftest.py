"""Shared test helpers.

Under `make test` (MIXVLLM_REQUIRE_ALL=1) a missing real part (Chromium, the embedded
engine, vLLM's CPU build) fails the test instead of skipping it, so CI never goes green
by silently skipping the real-engine or browser tests.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pexpect
import pytest

from tests.chat_support import CHAT
from tests.embedded_server import EmbeddedServer, run_embedded
from tests.embedded_server import installed as embedded_installed

REQUIRE_ALL = os.environ.get("MIXVLLM_REQUIRE_ALL") == "1"


def require(available: bool, reason: str) -> None:
    """Skip (locally) or fail (under `make test`) when a real part is missing."""
    if available:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required for the full suite but missing: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    """Start the tests with the signals of an interactive shell, whatever started pytest.

    A non-interactive shell starts a background job (`make test &` in a script) with SIGINT
    and SIGQUIT ignored, and every program a test starts (chat on a pexpect PTY, a server)
    inherited that: Ctrl-C tests failed for a reason of the harness. The tests that check
    that a program resets what it inherited start it through a wrapper that sets it again.
    """
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM):
        if signal.getsignal(sig) == signal.SIG_IGN:
            handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


@pytest.fixture
def spawn_chat(tmp_path: Path) -> Iterator[Callable[..., pexpect.spawn]]:
    """Start chat on a real PTY in tmp_path: `spawn_chat(*args, env=...)`.

    Whatever a test leaves running is killed after it.
    """
    children: list[pexpect.spawn] = []

    def spawn(
        *args: str,
        env: dict[str, str],
        program: Sequence[str] = CHAT,
        timeout: float = 30,
        dimensions: tuple[int, int] = (40, 120),
    ) -> pexpect.spawn:
        child = pexpect.spawn(
            program[0], [*program[1:], *args], env=env, cwd=str(tmp_path), encoding="utf-8",
            dimensions=dimensions, timeout=timeout,
        )  # fmt: skip
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.close(force=True)


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    # An object left to the garbage collector (an unclosed socket) then warns in its own test.
    yield
    gc.collect()


# --- the real embedded model server (owned by the model-server part) ---------------------


@pytest.fixture(scope="session")
def embedded_model_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmbeddedServer]:
    """llama.cpp + SmolLM2 started once per session on a free port with a generated key.

    Yields an object with `.base_url` (http://127.0.0.1:PORT/v1), `.api_key` and `.model`.
    """
    ok, why = embedded_installed()
    require(ok, why)
    with run_embedded(tmp_path_factory.mktemp("embedded-model-server")) as server:
        yield server
