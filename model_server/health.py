"""Readiness checks for an OpenAI-compatible model server (vLLM or llama.cpp).

vLLM answers `GET /health` with 200 once the engine is up (503 once it died); llama.cpp's own
server (the embedded engine, llama-server) answers 503 "Loading model" until its model is
loaded, then 200. A server without /health (llama-cpp-python's) is ready when `/v1/models`
(with the key) answers.

`container_health` is the container's health check: a server that does not answer yet is
still downloading or loading its model (healthy, however long that takes); one that
answers with an error, or stops answering after it was ready, is broken.

HTTP goes through mixvllm_common.http_client, chat's client too (standard library: the health
check runs every few seconds in the model container, where importing an HTTP client package
would cost more than the check itself): the environment's proxy settings apply ($no_proxy
names a server to reach directly) and a body is read up to a bound.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixvllm_common import http_client
from mixvllm_common.urls import server_root
from model_server.errors import LauncherError

CONNECT_TIMEOUT_S = 2.0
# llama.cpp's /health body while it loads the model: starting, not broken.
LOADING_MODEL = b"Loading model"
# What cannot be sent or read in time: the server is not (yet) answering HTTP.
TransportError = (*http_client.TransportError, http_client.Timeout)


class NotReady(LauncherError):
    """The server did not become ready in time, or refused our key."""


@dataclass(frozen=True)
class Probe:
    ready: bool
    detail: str
    fatal: bool = False
    # False while nothing answers HTTP at all: the engine is still starting.
    answered: bool = True


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def request(
    url: str,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    body: object = None,
) -> tuple[int, bytes]:
    """GET `url`, or POST `body` as JSON; (status, body). Raises TransportError."""
    return http_client.request(
        url, timeout=timeout, headers=headers, body=body, connect_timeout=CONNECT_TIMEOUT_S
    )


def transport_detail(exc: BaseException) -> str:
    """A few words for why nothing answered."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | http_client.Timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ConnectionError | http.client.RemoteDisconnected):
        return "connection closed"
    return type(exc).__name__


def _said_by_health(status: int, body: bytes) -> Probe | None:
    """What `GET /health` tells; None when the server has none."""
    if status == 200:
        return Probe(True, "/health: 200")
    if status == 503 and LOADING_MODEL in body:
        return Probe(False, "/health: 503 (loading the model)", answered=False)
    return None if status == 404 else Probe(False, f"/health: {status}")


def probe(root: str, api_key: str | None, timeout: float = 5.0) -> Probe:
    try:
        said = _said_by_health(*request(f"{root}/health", timeout=timeout))
        if said is not None:
            return said
        # No /health (llama-cpp-python): a keyed /v1/models answers instead.
        status, _ = request(f"{root}/v1/models", timeout=timeout, headers=_headers(api_key))
    except TransportError as exc:
        return Probe(False, transport_detail(exc), answered=False)
    if status == 200:
        return Probe(True, "/v1/models: 200")
    if status in (401, 403):
        # Up, but our key is wrong: waiting longer will not help.
        return Probe(False, f"/v1/models: {status} (API key rejected)", fatal=True)
    return Probe(False, f"/v1/models: {status}")


def wait(
    url: str,
    *,
    timeout: float,
    api_key: str | None = None,
    interval: float = 0.5,
    progress: Callable[[str], None] | None = None,
    progress_every: float = 5.0,
    alive: Callable[[], bool] | None = None,
) -> float:
    """Poll until the server is ready; return the seconds it took, or raise NotReady.

    `alive` lets a caller that owns the server process stop waiting when it dies.
    """
    root = server_root(url)
    start = time.monotonic()
    last_report = start
    detail = "not polled yet"
    while True:
        result = probe(root, api_key)
        now = time.monotonic()
        if result.ready:
            return now - start
        detail = result.detail
        if result.fatal:
            raise NotReady(f"{root}: {detail}")
        if alive is not None and not alive():
            raise NotReady(f"{root}: the server process exited ({detail})")
        if now - start >= timeout:
            raise NotReady(f"{root} not ready after {timeout:g}s (last: {detail})")
        if progress is not None and now - last_report >= progress_every:
            progress(f"waiting for {root}: {now - start:.0f}s/{timeout:g}s ({detail})")
            last_report = now
        time.sleep(min(interval, max(0.0, timeout - (now - start))))


def first_answer(url: str, *, model: str, api_key: str | None, timeout: float = 60.0) -> str:
    """Ask for one token of a chat completion: proves the model really answers."""
    root = server_root(url)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 1,
        "temperature": 0,
    }
    try:
        status, data = request(
            f"{root}/v1/chat/completions", timeout=timeout, headers=_headers(api_key), body=body
        )
    except TransportError as exc:
        raise NotReady(f"{root}: chat completion failed: {transport_detail(exc)}") from exc
    if status != 200:
        raise NotReady(f"{root}: chat completion answered {status}")
    try:
        content = json.loads(data)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise NotReady(f"{root}: chat completion answer is malformed") from exc
    return str(content or "")


def run_id() -> str:
    """Names this boot of this container: the boot id and PID 1's start time."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    # Field 22 of /proc/1/stat, counted after the command name, which may hold spaces.
    started = Path("/proc/1/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[19]
    return f"{boot}/{started}"


def _remember(marker: Path, this_run: str) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(this_run + "\n", encoding="ascii")
    except OSError:
        pass  # a read-only state dir only costs the "stopped answering" diagnosis


@dataclass(frozen=True)
class Health:
    healthy: bool
    detail: str


def container_health(url: str, *, api_key: str | None, marker: Path, timeout: float) -> Health:
    """Ready or still starting: healthy. Answering errors, or silent after being ready in
    this run of the container (`marker` remembers that): broken."""
    root = server_root(url)
    this_run = run_id()
    result = probe(root, api_key, timeout)
    try:
        was_ready = marker.read_text(encoding="ascii").strip() == this_run
    except OSError:
        was_ready = False
    if result.ready:
        if not was_ready:
            _remember(marker, this_run)
        return Health(True, f"ready ({result.detail})")
    if result.answered:
        return Health(False, f"broken: {result.detail}")
    if was_ready:
        return Health(False, f"broken: stopped answering after it was ready ({result.detail})")
    return Health(True, f"starting: downloading or loading the model ({result.detail})")
