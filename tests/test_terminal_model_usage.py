"""Each user's model usage (model_proxy/usage.py): counted, reset at local midnight, kept
across restarts in an owner-only file, and exported per user in /metrics in team modes only."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from terminal_server.model_proxy.usage import Usage, UserUsage, metric_lines

from .prometheus_support import promtool, samples
from .terminal_support import TOKEN, run, running_server


class Clock:
    def __init__(self) -> None:
        self.day = "2026-12-07"

    def __call__(self) -> str:
        return self.day


def test_tokens_and_requests_are_counted_per_user() -> None:
    usage = Usage(quota=100)
    usage.started("alice")
    usage.started("alice")
    usage.started("bob")
    assert (usage.active("alice"), usage.active("bob"), usage.active("carol")) == (2, 1, 0)
    usage.finished("alice", 10, 20)
    usage.finished("bob", 3, 4)
    usage.refused("bob")
    snap = usage.snapshot()
    assert snap["alice"] == UserUsage(10, 20, 10, 20, requests=1, active=1, quota=100)
    assert snap["bob"] == UserUsage(3, 4, 3, 4, requests=1, active=0, refused=1, quota=100)
    assert snap["alice"].tokens_today == 30
    usage.finished("alice", 40, 30)
    assert usage.over_quota("alice") and not usage.over_quota("bob")
    assert snap["alice"].requests == 1  # a snapshot does not move with later requests


def test_no_quota_never_refuses() -> None:
    usage = Usage(quota=0)
    usage.started("alice")
    usage.finished("alice", 10**9, 10**9)
    assert not usage.over_quota("alice")
    assert usage.snapshot()["alice"].quota is None


def test_today_resets_at_midnight_and_the_totals_stay() -> None:
    clock = Clock()
    usage = Usage(quota=50, today=clock)
    usage.started("alice")
    usage.finished("alice", 30, 30)
    assert usage.over_quota("alice")
    clock.day = "2026-12-08"
    assert not usage.over_quota("alice")
    snap = usage.snapshot()["alice"]
    assert (snap.tokens_today, snap.prompt_total, snap.completion_total) == (0, 30, 30)


def test_usage_survives_a_restart_in_an_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "model-usage.json"
    clock = Clock()
    first = Usage(path, quota=50, today=clock)
    first.started("alice")
    first.finished("alice", 25, 25)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Usage(path, quota=50, today=clock)
    assert again.over_quota("alice")  # a restart does not reset the quota
    assert again.snapshot()["alice"].requests == 1
    clock.day = "2026-12-08"
    tomorrow = Usage(path, quota=50, today=clock)  # started on a later day: today is new
    assert tomorrow.snapshot()["alice"].tokens_today == 0
    assert tomorrow.snapshot()["alice"].prompt_total == 25


def test_an_unreadable_usage_file_counts_from_zero_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "model-usage.json"
    path.write_text('{"day": "2026-12-07", "users": {"alice": {"prompt_today": "x"}}}')
    with caplog.at_level(logging.ERROR, "mixvllm.terminal"):
        usage = Usage(path, today=Clock())
    assert usage.snapshot() == {}
    assert "unreadable" in caplog.text and "counting from zero" in caplog.text


def test_per_user_series_pass_promtool() -> None:
    usage = Usage(quota=10)
    usage.started("alice")
    usage.finished("alice", 5, 6)
    usage.started("bob")
    text = "\n".join(metric_lines(usage.snapshot())) + "\n"
    promtool("check", "metrics", stdin=text)
    got = samples(text)
    tokens = "mixvllm_terminal_model_tokens_total"
    assert got[(tokens, (("kind", "prompt"), ("user", "alice")))] == 5
    assert got[("mixvllm_terminal_model_tokens_today", (("user", "alice"),))] == 11
    assert got[("mixvllm_terminal_model_active_requests", (("user", "bob"),))] == 1


def test_metrics_have_a_user_label_only_in_team_mode() -> None:
    async def body() -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with running_server() as srv:
            srv.ctx.usage.started("owner")
            text = (await srv.fetch("metrics", headers)).body.decode()
            assert "mixvllm_terminal_model_" not in text
        async with running_server(auth="proxy") as srv:
            srv.ctx.usage.started("alice")
            srv.ctx.usage.finished("alice", 2, 3)
            resp = await srv.fetch("metrics", {**headers, "X-Forwarded-User": "alice"})
            assert resp.code == 200, resp.body
            got = samples(resp.body.decode())
            tokens = "mixvllm_terminal_model_tokens_total"
            assert got[(tokens, (("kind", "completion"), ("user", "alice")))] == 3

    run(body)
