"""The one stdlib HTTP client chat and the launcher share (mixvllm_common.http_client), through
the launcher's health checks: the environment's proxy is used, a body is bounded in size and
in time. (Chat's side is in test_chat_client: its proxy test and its timeouts.)"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mixvllm_common import http_client
from model_server import health
from tests.fake_openai import FakeServer
from tests.test_chat_client import fake, proxy

__all__ = ["fake", "proxy"]  # fixtures


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_health_check_goes_through_the_environments_proxy(
    fake: FakeServer, proxy: tuple[str, list[bytes]], no_proxy_env: pytest.MonkeyPatch
) -> None:
    url, seen = proxy
    no_proxy_env.setenv("http_proxy", url)
    # The fake has no /health (like llama.cpp): the keyed /v1/models answers instead.
    assert health.probe(fake.url, None) == health.Probe(True, "/v1/models: 200")
    assert seen == [
        f"GET {fake.url}/health HTTP/1.1".encode(),
        f"GET {fake.url}/v1/models HTTP/1.1".encode(),
    ]


def test_no_proxy_names_a_server_to_reach_directly(
    fake: FakeServer, proxy: tuple[str, list[bytes]], no_proxy_env: pytest.MonkeyPatch
) -> None:
    url, seen = proxy
    no_proxy_env.setenv("http_proxy", url)
    no_proxy_env.setenv("no_proxy", "127.0.0.1")
    assert health.probe(fake.url, None).ready
    assert seen == []


@contextlib.contextmanager
def raw_server(length: int, body: Iterator[bytes]) -> Iterator[str]:
    """One HTTP response per connection: a Content-Length of `length`, then `body`'s pieces
    until the client hangs up or they run out."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            client, _ = listener.accept()
            with client:
                client.recv(65536)
                client.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode())
                for piece in body:
                    client.sendall(piece)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(10)


def test_a_body_is_read_up_to_the_bound(no_proxy_env: pytest.MonkeyPatch) -> None:
    size = 3 * http_client.BODY_LIMIT
    with raw_server(size, iter([b"x" * size])) as url:
        status, body = health.request(url + "/health", timeout=10.0)
    assert (status, len(body)) == (200, http_client.BODY_LIMIT)


def test_a_body_that_drips_is_cut_at_the_deadline(no_proxy_env: pytest.MonkeyPatch) -> None:
    """A byte every 50 ms never trips a per-read timeout; the deadline holds all the same."""

    def drip() -> Iterator[bytes]:
        for _ in range(200):  # 10 s at most, should the deadline not hold
            time.sleep(0.05)  # the fake server's pace, not a wait of the test
            yield b"x"

    with raw_server(1000, drip()) as url:
        started = time.monotonic()
        with pytest.raises(http_client.Timeout):
            health.request(url + "/health", timeout=0.5)
        assert time.monotonic() - started < 3.0
    assert health.transport_detail(http_client.Timeout(started=True)) == "timed out"
