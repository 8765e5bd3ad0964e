"""Polls the model server so the page's status bar can show its state.

The poller runs on the server's event loop with short timeouts; the page reads the last
snapshot from `/api/status`, so a slow or dead model server never blocks a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Literal

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from mixvllm_common.urls import server_root

log = logging.getLogger(__name__)

# "busy": the server took the connection but did not answer in time; llama.cpp's server,
# for one, answers nothing else while it generates.
State = Literal["unknown", "loading", "ready", "busy", "unauthorized", "unreachable"]

# vLLM has renamed its KV-cache gauge across releases; the first one present wins.
_KV_CACHE_METRICS = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_RUNNING_METRIC = "vllm:num_requests_running"
_NO_ANSWER = -1
_WAITING_METRIC = "vllm:num_requests_waiting"
# vLLM's router lists its model servers here, each with the health its checks found; a
# single model server answers 404 and the bar shows no replica count.
_ROUTER_WORKERS = "/workers"


@dataclass(frozen=True)
class ModelStatus:
    url: str
    state: State = "unknown"
    since: float = 0.0
    model: str | None = None
    detail: str = ""
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    # Behind vLLM's router: how many of its model servers pass its health checks.
    replicas: int | None = None
    replicas_up: int | None = None

    def as_json(self, now: float) -> dict[str, object]:
        body: dict[str, object] = asdict(self)
        body["for_seconds"] = round(max(0.0, now - self.since), 1) if self.since else None
        return body


_SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum each wanted metric over its label sets (vLLM labels gauges per model/engine)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE_LINE.match(line)
        if match is None or match.group(1) not in names:
            continue
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        found[match.group(1)] = found.get(match.group(1), 0.0) + value
    return found


class ModelStatusPoller:
    """Keeps the latest `ModelStatus` of one model server, refreshed every `interval` s."""

    def __init__(
        self,
        model_server_url: str,
        api_key: str | None = None,
        interval: float = 3.0,
        timeout: float = 2.0,
    ) -> None:
        self._root = server_root(model_server_url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._interval = interval
        self._timeout = timeout
        self._status = ModelStatus(url=self._root)
        self._task: asyncio.Task[None] | None = None

    @property
    def status(self) -> ModelStatus:
        return self._status

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval)

    async def poll_once(self) -> ModelStatus:
        try:
            fresh = await self._probe()
        except Exception:  # a poller bug must never take the terminal server down
            log.exception("model status poll failed")
            fresh = replace(self._status, state="unknown", detail="status poll failed")
        self._status = self._merge(fresh)
        return self._status

    def _merge(self, fresh: ModelStatus) -> ModelStatus:
        since = self._status.since if fresh.state == self._status.state else time.time()
        return replace(fresh, since=since)

    async def _probe(self) -> ModelStatus:
        code, body = await self._get("/v1/models")
        if code == 0:
            return ModelStatus(url=self._root, state="unreachable", detail=body)
        if code == _NO_ANSWER:
            return replace(self._status, state="busy", detail=body)
        if code in (401, 403):
            return ModelStatus(url=self._root, state="unauthorized", detail="API key rejected")
        up, total = await self._replicas()
        if code != 200:
            return ModelStatus(
                url=self._root, state="loading", detail=f"HTTP {code}", replicas=total,
                replicas_up=up,
            )  # fmt: skip
        metrics = await self._metrics()
        kv = next((metrics[name] for name in _KV_CACHE_METRICS if name in metrics), None)
        return ModelStatus(
            url=self._root,
            state="ready",
            model=_first_model_id(body),
            running=metrics.get(_RUNNING_METRIC),
            waiting=metrics.get(_WAITING_METRIC),
            kv_cache_usage=kv,
            replicas=total,
            replicas_up=up,
        )

    async def _replicas(self) -> tuple[int | None, int | None]:
        """(healthy, listed) model servers behind a router; (None, None) without one."""
        code, body = await self._get(_ROUTER_WORKERS)
        return parse_router_workers(body) if code == 200 else (None, None)

    async def _metrics(self) -> dict[str, float]:
        code, body = await self._get("/metrics")
        if code != 200:
            return {}  # llama.cpp and proxies may offer no metrics: degrade quietly
        return parse_prometheus(body, (_RUNNING_METRIC, _WAITING_METRIC, *_KV_CACHE_METRICS))

    async def _get(self, path: str) -> tuple[int, str]:
        """Return (HTTP status, body); 0: no connection; _NO_ANSWER: connected, no answer."""
        request = HTTPRequest(
            self._root + path,
            headers=self._headers,
            connect_timeout=self._timeout,
            request_timeout=self._timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as error:
            return self._failure(error)
        if response.code == 599:  # tornado's code for connection errors and timeouts
            return self._failure(response.error)
        return response.code, response.body.decode("utf-8", "replace")

    def _failure(self, error: BaseException | None) -> tuple[int, str]:
        if isinstance(error, HTTPClientError) and "during request" in str(error):
            return _NO_ANSWER, f"no answer within {self._timeout:g} s"
        return 0, _describe_unreachable(error)


def parse_router_workers(body: str) -> tuple[int | None, int | None]:
    """vLLM router's `/workers`: {"workers": [{"url": ..., "is_healthy": bool}, ...]}."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None, None
    workers = payload.get("workers") if isinstance(payload, Mapping) else None
    if not isinstance(workers, list) or not all(isinstance(w, Mapping) for w in workers):
        return None, None
    return sum(1 for w in workers if w.get("is_healthy") is True), len(workers)


def _first_model_id(body: str) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if isinstance(data, list) and data and isinstance(data[0], Mapping):
        model_id = data[0].get("id")
        return model_id if isinstance(model_id, str) else None
    return None


def _describe_unreachable(error: BaseException | None) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, HTTPClientError) and error.code == 599:
        return "timed out" if "Timeout" in str(error) else "no connection"
    return type(error).__name__ if error else "no connection"
