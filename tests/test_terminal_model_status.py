"""The model-status poller against real HTTP servers on loopback."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from terminal_server.model_status import (
    ModelStatusPoller,
    parse_prometheus,
    parse_router_workers,
)

from .support import free_port
from .terminal_support import run, running_server

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:num_requests_running_total 99
"""


class ScriptedModelServer:
    """A loopback HTTP server whose /v1/models answers follow a script (fault injection)."""

    def __init__(self, codes: list[int], metrics: str | None, workers: str | None = None) -> None:
        self.codes = codes
        self.metrics = metrics
        self.workers = workers  # a router's /workers body; None: a single server (404)
        self.auth_headers: list[str | None] = []

    def app(self) -> tornado.web.Application:
        script = self

        class Models(tornado.web.RequestHandler):
            def get(self) -> None:
                script.auth_headers.append(self.request.headers.get("Authorization"))
                code = script.codes.pop(0) if len(script.codes) > 1 else script.codes[0]
                self.set_status(code)
                if code == 200:
                    self.write({"object": "list", "data": [{"id": "tiny-model"}]})

        class Metrics(tornado.web.RequestHandler):
            def get(self) -> None:
                if script.metrics is None:
                    raise tornado.web.HTTPError(404)
                self.write(script.metrics)

        class Workers(tornado.web.RequestHandler):
            def get(self) -> None:
                if script.workers is None:
                    raise tornado.web.HTTPError(404)
                self.write(script.workers)

        return tornado.web.Application(
            [(r"/v1/models", Models), (r"/metrics", Metrics), (r"/workers", Workers)]
        )


@contextlib.asynccontextmanager
async def scripted_server(
    codes: list[int], metrics: str | None, workers: str | None = None
) -> AsyncIterator[tuple[ScriptedModelServer, str]]:
    """The script and its /v1 URL, served on a free loopback port for the test's duration."""
    script = ScriptedModelServer(codes, metrics, workers)
    sock, port = bind_unused_port()
    server = HTTPServer(script.app())
    server.add_sockets([sock])
    try:
        yield script, f"http://127.0.0.1:{port}/v1"
    finally:
        server.stop()
        await server.close_all_connections()


def test_parse_prometheus_sums_label_sets_and_ignores_lookalikes() -> None:
    found = parse_prometheus(
        VLLM_METRICS + 'vllm:num_requests_running{engine="1",model_name="m"} 3\n',
        ("vllm:num_requests_running", "vllm:kv_cache_usage_perc"),
    )
    assert found == {"vllm:num_requests_running": 5.0, "vllm:kv_cache_usage_perc": 0.25}


def test_loading_then_ready_with_vllm_load_figures() -> None:
    async def body() -> None:
        async with scripted_server([503, 200], VLLM_METRICS) as (script, url):
            poller = ModelStatusPoller(url, api_key="k3y")
            loading = await poller.poll_once()
            assert loading.state == "loading"
            assert loading.detail == "HTTP 503"
            ready = await poller.poll_once()
        assert ready.state == "ready"
        assert ready.model == "tiny-model"
        assert (ready.running, ready.waiting, ready.kv_cache_usage) == (2.0, 1.0, 0.25)
        assert ready.since >= loading.since
        assert script.auth_headers == ["Bearer k3y", "Bearer k3y"]

    run(body)


# vllm-router 0.1.17's GET /workers, verbatim, one of its two model servers just killed.
ROUTER_WORKERS = (
    '{"workers":[{"url":"http://127.0.0.1:18102","model_id":"unknown","worker_type":"regular",'
    '"is_healthy":false,"load":0,"connection_mode":"Http","priority":50,"cost":1.0},'
    '{"url":"http://127.0.0.1:18101","model_id":"unknown","worker_type":"regular",'
    '"is_healthy":true,"load":0,"connection_mode":"Http","priority":50,"cost":1.0}],'
    '"total":2,"stats":{"prefill_count":0,"decode_count":0,"regular_count":2}}'
)


def test_parse_router_workers_counts_the_healthy_ones() -> None:
    assert parse_router_workers(ROUTER_WORKERS) == (1, 2)
    assert parse_router_workers('{"workers":[]}') == (0, 0)
    for junk in ("", "not json", "[]", '{"workers": 3}', '{"workers": [1]}'):
        assert parse_router_workers(junk) == (None, None), junk


def test_behind_a_router_the_replicas_up_are_counted() -> None:
    async def body() -> None:
        async with scripted_server([200], None, ROUTER_WORKERS) as (_, url):
            ready = await ModelStatusPoller(url).poll_once()
        assert (ready.state, ready.replicas_up, ready.replicas) == ("ready", 1, 2)
        # Every replica down: the router answers /v1/models with an error; the count says why.
        down = ROUTER_WORKERS.replace('"is_healthy":true', '"is_healthy":false')
        async with scripted_server([503], None, down) as (_, url):
            none_up = await ModelStatusPoller(url).poll_once()
        assert (none_up.state, none_up.replicas_up, none_up.replicas) == ("loading", 0, 2)
        async with scripted_server([200], None) as (_, url):
            single = await ModelStatusPoller(url).poll_once()
        assert single.as_json(0.0)["replicas"] is None

    run(body)


def test_server_without_metrics_degrades_quietly() -> None:
    async def body() -> None:
        async with scripted_server([200], None) as (_, url):
            status = await ModelStatusPoller(url).poll_once()
        assert status.state == "ready"
        assert status.model == "tiny-model"
        assert (status.running, status.waiting, status.kv_cache_usage) == (None, None, None)

    run(body)


def test_rejected_key_is_reported() -> None:
    async def body() -> None:
        async with scripted_server([401], None) as (_, url):
            status = await ModelStatusPoller(url).poll_once()
        assert status.state == "unauthorized"

    run(body)


def test_closed_port_is_unreachable_and_keeps_its_since() -> None:
    async def body() -> None:
        poller = ModelStatusPoller(f"http://127.0.0.1:{free_port()}", timeout=1.0)
        first = await poller.poll_once()
        second = await poller.poll_once()
        assert first.state == second.state == "unreachable"
        assert second.since == first.since
        assert second.as_json(second.since + 5)["for_seconds"] == 5.0

    run(body)


def test_status_endpoint_serves_the_snapshot_behind_the_token() -> None:
    async def body() -> None:
        async with (
            scripted_server([200], VLLM_METRICS) as (_, url),
            running_server(model_server_url=url, model_api_key="k3y") as srv,
        ):
            refused = await srv.fetch("api/status")
            assert refused.code == 403
            await srv.ctx.model_status.poll_once()
            response = await srv.fetch("api/status", headers=srv.auth_headers())
        assert response.code == 200
        snapshot = json.loads(response.body)
        assert snapshot["state"] == "ready"
        assert snapshot["model"] == "tiny-model"
        assert snapshot["kv_cache_usage"] == 0.25
        assert "k3y" not in response.body.decode()

    run(body)


def test_a_server_too_busy_to_answer_is_busy_not_unreachable() -> None:
    # llama.cpp's server accepts connections but answers nothing else while it generates.
    async def body() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            poller = ModelStatusPoller(f"http://127.0.0.1:{port}", timeout=0.3)
            status = await poller.poll_once()
        assert status.state == "busy"
        assert status.detail == "no answer within 0.3 s"

    run(body)
