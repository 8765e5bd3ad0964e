"""/metrics as Prometheus scrapes it: the alerts in deploy/prometheus read these series."""

from __future__ import annotations

from terminal_server.metrics import Metrics

from .prometheus_support import promtool, samples
from .terminal_support import TOKEN, run, running_server


def test_responses_are_counted_by_status_class_and_the_limit_is_exported() -> None:
    async def body() -> None:
        async with running_server(max_sessions=7) as srv:
            assert (await srv.fetch("healthz")).code == 403  # no token
            assert (await srv.fetch("healthz", srv.auth_headers())).code == 200
            m = await srv.fetch("metrics", {"Authorization": f"Bearer {TOKEN}"})
            assert m.code == 200
            text = m.body.decode()
            promtool("check", "metrics", stdin=text)  # Prometheus's own linter: no findings
            got = samples(text)
            assert got[("mixvllm_terminal_max_sessions", ())] == 7
            assert got[("mixvllm_terminal_sessions", ())] == 0
            # The scrape itself is logged (and counted) after its body is written.
            assert got[("mixvllm_terminal_http_responses_total", (("code", "4xx"),))] == 1
            assert got[("mixvllm_terminal_http_responses_total", (("code", "2xx"),))] == 1
            assert got[("mixvllm_terminal_http_responses_total", (("code", "5xx"),))] == 0

    run(body)


def test_server_errors_are_one_bounded_series() -> None:
    metrics = Metrics()
    for status in (500, 502, 503, 599):
        metrics.count_response(status)
    got = samples(metrics.render(sessions=1, clients=2, version="t", max_sessions=4))
    assert got[("mixvllm_terminal_http_responses_total", (("code", "5xx"),))] == 4
    codes = [labels for (name, labels) in got if name == "mixvllm_terminal_http_responses_total"]
    assert sorted(codes) == [(("code", c),) for c in ("2xx", "3xx", "4xx", "5xx")]
