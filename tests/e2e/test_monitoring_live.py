"""The dashboard and the alerts on a live Prometheus (Debian's binary, the one the monitoring
profile's image installs) scraping real vLLM (its CPU build) and a real terminal server, with
the scrape configuration of deploy/prometheus/prometheus.yml, after a real chat: every scrape
target is up, every dashboard query returns data, and every alert rule evaluates cleanly.

The compose profile runs the same binary and files in containers (`make compose-test`);
here no Docker is needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from model_server import profiles
from model_server.up import stop_process
from tests import vllm_cpu
from tests.conftest import require
from tests.support import free_port, isolated_home, wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
BIN = Path(sys.executable).parent
API_KEY = "monitoring-test-key"
TOKEN = "monitoring-test-token"


@dataclass(frozen=True)
class Stack:
    vllm: vllm_cpu.Server
    terminal: str  # http://127.0.0.1:PORT/
    prometheus: str  # http://127.0.0.1:PORT


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip


def _answers(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _config(tmp: Path, vllm_port: int, terminal_port: int) -> Path:
    """deploy/prometheus's configuration with this run's ports, token file and a 1 s interval."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["vllm"]["static_configs"] = [{"targets": [f"127.0.0.1:{vllm_port}"]}]
    jobs["terminal"]["static_configs"] = [{"targets": [f"127.0.0.1:{terminal_port}"]}]
    (tmp / "terminal_token").write_text(TOKEN)
    jobs["terminal"]["authorization"]["credentials_file"] = str(tmp / "terminal_token")
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp / "alerts.yml")
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = shutil.which("prometheus")
    require(prometheus_bin is not None, "prometheus is not installed (make system-packages)")
    assert prometheus_bin is not None
    ok, why = vllm_cpu.installed()
    require(ok, why)
    tmp = tmp_path_factory.mktemp("monitoring")
    model = profiles.load("cpu-vllm").served_model_name
    with vllm_cpu.serve("cpu-vllm", model, api_key=API_KEY) as vllm:
        terminal_port, prometheus_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MIXVLLM_", "VLLM_"))}
        env |= {"MODEL_SERVER_URL": vllm.base_url, "VLLM_API_KEY": API_KEY, **isolated_home(tmp)}
        # This checkout's server (the venv's entry point may belong to another checkout).
        env["PYTHONPATH"] = str(ROOT)
        argv = [sys.executable, "-m", "terminal_server", "--host", "127.0.0.1",
                "--port", str(terminal_port), "--token", TOKEN]  # fmt: skip
        terminal = _spawn(argv, tmp / "terminal.log", env)
        config = _config(tmp, int(vllm.root.rsplit(":", 1)[1]), terminal_port)
        prometheus = _spawn([prometheus_bin, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                            tmp / "prometheus.log", env)  # fmt: skip
        try:
            root = f"http://127.0.0.1:{prometheus_port}"
            wait_for(lambda: _answers(f"{root}/-/ready"), 60, "Prometheus ready")
            term = f"http://127.0.0.1:{terminal_port}/"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            wait_for(lambda: _answers(f"{term}healthz", auth), 30, "terminal /healthz")
            yield Stack(vllm=vllm, terminal=term, prometheus=root)
        finally:
            stop_process(prometheus)
            stop_process(terminal)


def query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", (expr, body)
    result = body["data"]["result"]
    assert isinstance(result, list)
    return result


def dashboard_queries() -> list[tuple[str, str]]:
    return [(f"{path.stem}: {panel['title']}", target["expr"])
            for path in DASHBOARDS for panel in json.loads(path.read_text())["panels"]
            for target in panel.get("targets", [])]  # fmt: skip


def test_every_dashboard_query_returns_data_after_a_real_chat(stack: Stack, tmp_path: Path) -> None:
    chat_env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "VLLM_"))}
    chat_env |= {"MODEL_SERVER_URL": stack.vllm.root, "VLLM_API_KEY": API_KEY,
                 **isolated_home(tmp_path)}  # fmt: skip
    done = subprocess.run([str(BIN / "chat"), "--plain", "--max-tokens", "16", "Name a fruit."],
                          env=chat_env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # A refused request and a served one: the terminal's responses by class have samples.
    assert httpx.get(f"{stack.terminal}healthz", timeout=5).status_code == 403

    wait_for(lambda: {r["metric"]["job"] for r in query(stack, "up == 1")} >= {"vllm", "terminal"},
             30, "both targets up")  # fmt: skip
    wait_for(lambda: query(stack, "sum(vllm:generation_tokens_total) > 0"), 30,
             "the chat's tokens scraped")  # fmt: skip
    empty = []
    for where, panel_expr in dashboard_queries():
        expr = panel_expr.replace("$__rate_interval", "1m")
        try:
            wait_for(lambda e=expr: query(stack, e), 20, where)  # type: ignore[misc]
        except AssertionError:
            empty.append(f"{where}: {expr}")
    assert empty == [], "no data:\n" + "\n".join(empty)


def test_every_alert_rule_evaluates_cleanly(stack: Stack) -> None:
    def rules() -> list[dict[str, Any]]:
        response = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10)
        return [r for g in response.json()["data"]["groups"] for r in g["rules"]]

    wait_for(lambda: all(r.get("lastEvaluation", "").startswith("2") for r in rules()) and
             rules(), 30, "every rule evaluated")  # fmt: skip
    assert {r["name"]: r["health"] for r in rules()} == {r["name"]: "ok" for r in rules()}
    # Nothing is wrong with this stack: no alert is even pending.
    assert [r["name"] for r in rules() if r["state"] != "inactive"] == []
