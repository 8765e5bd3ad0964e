"""deploy/prometheus and deploy/grafana checked offline with Prometheus's own promtool: the
config loads, the alert rules parse and pass their unit tests (which must be able to fail),
every query of the dashboard parses, and every series the alerts and the dashboard name is
one the scrape targets export (vLLM's CPU build's source, the terminal's /metrics)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from terminal_server.metrics import Metrics
from tests.conftest import require
from tests.prometheus_support import promtool, samples
from tests.vllm_cpu import VLLM_VENV

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
TOKEN_FILE = "/run/secrets/terminal_token"  # the compose secret's mount point
# Earlier vLLM releases' name of vllm:kv_cache_usage_perc (terminal_server/model_status.py
# reads both); the alert covers both so an older image still alerts.
LEGACY = {"vllm:gpu_cache_usage_perc"}
_KIND_SUFFIXES = {
    "gauge": ("",),
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (function names, label names and keywords
    left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = re.findall(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()", expr)
    return {n for n in names if n.lower() not in _KEYWORDS}


@cache
def vllm_exports() -> frozenset[str]:
    """Series names vLLM's CPU build registers, with the suffixes its client adds."""
    sources = sorted(VLLM_VENV.glob("lib/python3*/site-packages/vllm/v1/metrics/loggers.py"))
    require(bool(sources), "vLLM's CPU build is not installed (make vllm-cpu)")
    found = re.findall(r'_(gauge|counter|histogram)_cls\(\s*name="(vllm:\w+)"',
                       sources[0].read_text())  # fmt: skip
    assert len(found) > 20, "vLLM's metric declarations moved: update this parser"
    return frozenset(name.removesuffix("_total") + suffix for kind, name in found
                     for suffix in _KIND_SUFFIXES[kind])  # fmt: skip


def terminal_exports() -> set[str]:
    text = Metrics().render(sessions=0, clients=0, version="t", max_sessions=1)
    return {name for name, _ in samples(text)}


def exported() -> set[str]:
    return {"up", *vllm_exports(), *terminal_exports(), *LEGACY}


def alert_rules() -> list[dict[str, str]]:
    data = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard_queries() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.stem}: {panel['title']}", target["expr"]


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus.cpu.yml"])
def test_config_loads(tmp_path: Path, name: str) -> None:
    config = (PROMETHEUS / name).read_text()
    assert TOKEN_FILE in config  # a file, never the token itself
    token = tmp_path / "terminal_token"
    token.write_text("t\n")
    copy = tmp_path / name
    copy.write_text(config.replace(TOKEN_FILE, str(token)))
    (tmp_path / "alerts.yml").write_text((PROMETHEUS / "alerts.yml").read_text())
    out = promtool("check", "config", str(copy))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_alerts_pass_their_unit_tests() -> None:
    out = promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert f"SUCCESS: {len(alert_rules())} rules found" in out
    promtool("test", "rules", "alerts.test.yml", cwd=PROMETHEUS)


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    tested = {check["alertname"] for t in tests for check in t["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alert_rules()}


THRESHOLDS = [("> 10", "> 12"), ("> 0.9", "> 0.96"), ("for: 2m", "for: 4m"), (") > 2", ") > 5")]


@pytest.mark.parametrize(("before", "after"), THRESHOLDS)
def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path, before: str, after: str) -> None:
    rules = (PROMETHEUS / "alerts.yml").read_text()
    assert rules.count(before) == 1
    (tmp_path / "alerts.yml").write_text(rules.replace(before, after))
    (tmp_path / "alerts.test.yml").write_text((PROMETHEUS / "alerts.test.yml").read_text())
    with pytest.raises(AssertionError, match="FAILED"):
        promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)


def test_alerts_name_only_exported_series() -> None:
    used = {name for rule in alert_rules() for name in metric_names(rule["expr"])}
    assert "vllm:num_requests_waiting" in used
    assert used <= exported(), sorted(used - exported())


def test_every_dashboard_query_parses_and_names_exported_series(tmp_path: Path) -> None:
    queries = list(dashboard_queries())
    assert len(queries) >= 10
    # promtool parses PromQL offline only inside rule files: one recording rule per query.
    rules = [{"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
             for i, (_, expr) in enumerate(queries)]  # fmt: skip
    group = {"name": "dashboard", "rules": rules}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [group]}))
    out = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in out
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: selects no series"
        assert names <= exported(), f"{where}: {sorted(names - exported())}"
    covered = {name for _, expr in queries for name in metric_names(expr)}
    assert {"up", "vllm:num_requests_waiting", "mixvllm_terminal_sessions"} <= covered


def test_metric_names_are_read_from_an_expression() -> None:
    expr = ('histogram_quantile(0.95, sum by (instance, le) (rate(vllm:ttft_bucket{job="a b",'
            'le!="x"}[5m]))) > 2 and on (instance) up offset 1m')  # fmt: skip
    assert metric_names(expr) == {"vllm:ttft_bucket", "up"}


def test_dashboard_reads_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    uids = {d["uid"] for d in datasources}
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] in uids, (path.name, panel["title"])


class _ResetLoader(yaml.SafeLoader):
    """Compose's `!reset` tag, kept as a marker."""


_ResetLoader.add_constructor("!reset", lambda loader, node: "!reset")


def _compose(name: str) -> dict[str, Any]:
    data = yaml.load((ROOT / name).read_text(), Loader=_ResetLoader)
    assert isinstance(data, dict)
    return data


def _scrape_targets(config: str) -> dict[str, list[str]]:
    jobs = yaml.safe_load((PROMETHEUS / config).read_text())["scrape_configs"]
    return {
        job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        for job in jobs
    }


def _dockerfile_cmd() -> list[str]:
    text = (ROOT / "Dockerfile.prometheus").read_text().replace("\\\n", " ")
    (cmd,) = [line for line in text.splitlines() if line.startswith("CMD ")]
    argv = json.loads(cmd.removeprefix("CMD "))
    assert isinstance(argv, list)
    return argv


def test_monitoring_profile_scrapes_the_stacks_services() -> None:
    compose = _compose("docker-compose.yml")
    services = compose["services"]
    prom = services["prometheus"]
    assert prom["profiles"] == ["monitoring"]  # off unless asked for
    assert prom["build"]["dockerfile"] == "Dockerfile.prometheus"
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert all(str(p).startswith("127.0.0.1:") for p in prom["ports"])  # loopback only
    assert prom["read_only"] is True and prom["cap_drop"] == ["ALL"]
    # The token reaches Prometheus as the file its config names, from the .env variable.
    assert prom["secrets"] == ["terminal_token"]
    assert compose["secrets"]["terminal_token"] == {"environment": "MIXVLLM_TERMINAL_TOKEN"}
    assert "MIXVLLM_TERMINAL_TOKEN" in services["terminal-server"]["environment"]
    # Every scraped host:port is a service of the stack on the port it listens on.
    targets = _scrape_targets("prometheus.yml")
    model_port = services["model-server"]["environment"]["MODEL_SERVER_PORT"]
    terminal_port = services["terminal-server"]["environment"]["MIXVLLM_TERMINAL_PORT"]
    assert targets["vllm"] == [f"model-server:{model_port}"]
    assert targets["terminal"] == [f"terminal-server:{terminal_port}"]


def test_cpu_stack_loads_the_same_config_without_the_vllm_job() -> None:
    full = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    cpu = yaml.safe_load((PROMETHEUS / "prometheus.cpu.yml").read_text())
    assert cpu == {
        **full,
        "scrape_configs": [j for j in full["scrape_configs"] if j["job_name"] != "vllm"],
    }
    command = _compose("docker-compose.cpu.yml")["services"]["prometheus"]["command"]
    default = _dockerfile_cmd()
    assert "--config.file=/etc/prometheus/prometheus.yml" in default
    swapped = [a.replace("prometheus.yml", "prometheus.cpu.yml") for a in default]
    assert command == swapped
