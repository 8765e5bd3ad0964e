"""Readiness checks for an OpenAI-compatible model server (vLLM or llama.cpp).

vLLM answers `GET /health` with 200 once the engine is up; llama.cpp's server has no
/health, so `/v1/models` (with the key) counts as ready too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from mixvllm_common.urls import server_root


class NotReady(Exception):
    """The server did not become ready in time, or refused our key."""


@dataclass(frozen=True)
class Probe:
    ready: bool
    detail: str
    fatal: bool = False


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def probe(client: httpx.Client, root: str, api_key: str | None) -> Probe:
    try:
        health = client.get(f"{root}/health")
        if health.status_code == 200:
            return Probe(True, "/health: 200")
        if health.status_code != 404:
            return Probe(False, f"/health: {health.status_code}")
        # No /health (llama.cpp): a keyed /v1/models answers instead.
        models = client.get(f"{root}/v1/models", headers=_headers(api_key))
    except httpx.TransportError as exc:
        return Probe(False, type(exc).__name__)
    if models.status_code == 200:
        return Probe(True, "/v1/models: 200")
    if models.status_code in (401, 403):
        # Up, but our key is wrong: waiting longer will not help.
        return Probe(False, f"/v1/models: {models.status_code} (API key rejected)", fatal=True)
    return Probe(False, f"/v1/models: {models.status_code}")


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
    with httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0)) as client:
        while True:
            result = probe(client, root, api_key)
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
        response = httpx.post(
            f"{root}/v1/chat/completions", json=body, headers=_headers(api_key), timeout=timeout
        )
    except httpx.TransportError as exc:
        raise NotReady(f"{root}: chat completion failed: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise NotReady(f"{root}: chat completion answered {response.status_code}")
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise NotReady(f"{root}: chat completion answer is malformed") from exc
    return str(content or "")
