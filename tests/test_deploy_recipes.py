"""The compose recipes rendered by Docker Compose itself and followed as the docs write them:
the profile's parallelism survives, multi-node nodes get the right roles and addresses,
every documented command works from the repository root, the replicas reach the model
server, HAProxy's configuration is valid and the model's health check tells loading from
broken."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from model_server import profiles
from tests.compose_support import ROOT, SECRETS, checkout, render, shell
from tests.conftest import require
from tests.docs_support import pages, section
from tests.embedded_server import free_port
from tests.test_model_health import serve as fake_model_server

MULTINODE = ("--env-file", ".env", "-f", "deploy/compose.multinode.yml")
REPLICAS = ("-f", "docker-compose.yml", "-f", "deploy/compose.terminal-replicas.yml")


def launcher_argv(environment: dict[str, Any], tmp_path: Path, **extra: str) -> list[str]:
    """The engine command the image's launcher runs with a container's rendered environment."""
    env = {k: str(v) for k, v in environment.items() if v is not None}
    env |= {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "MIXVLLM_VLLM_BIN": "vllm",
            "MIXVLLM_STATE_DIR": str(tmp_path / "state"), **extra}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "model_server", "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return shlex.split(done.stdout)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# --- 1. compose keeps the profile's parallelism ----------------------------------------


@pytest.mark.parametrize("name", profiles.available())
def test_every_profile_keeps_its_parallelism_through_compose(name: str, tmp_path: Path) -> None:
    p = profiles.load(name)
    stack = checkout(tmp_path, MIXVLLM_PROFILE=name)
    env = render(stack)["services"]["model-server"]["environment"]
    assert env["MIXVLLM_PROFILE"] == name
    argv = launcher_argv(env, tmp_path)
    if p.engine == "vllm":
        assert flag(argv, "--tensor-parallel-size") == str(p.tensor_parallel_size)
        assert flag(argv, "--pipeline-parallel-size") == str(p.pipeline_parallel_size)
    # An override in .env still wins.
    if p.engine == "vllm":
        stack = checkout(tmp_path / "override", MIXVLLM_PROFILE=name, TENSOR_PARALLEL_SIZE="2")
        env = render(stack)["services"]["model-server"]["environment"]
        assert flag(launcher_argv(env, tmp_path), "--tensor-parallel-size") == "2"


# --- 2, 3, 5. multi-node: vLLM's native mode, the right profile, addresses, interfaces ----


@pytest.fixture
def multinode_stack(tmp_path: Path) -> Path:
    # The single-node settings of the same .env must not reach the multi-node recipe.
    return checkout(tmp_path, MIXVLLM_PROFILE="qwen2-7b-instruct", TENSOR_PARALLEL_SIZE="1")


def test_multinode_head_serves_the_multinode_profile(multinode_stack: Path, tmp_path: Path) -> None:
    data = render(multinode_stack, *MULTINODE, "--profile", "head", env={"NODE_IP": "127.0.0.1"})
    assert list(data["services"]) == ["head"]
    head = data["services"]["head"]
    assert (head["network_mode"], head["ipc"]) == ("host", "host")
    assert "shm_size" not in head  # ignored next to ipc: host
    env = head["environment"]
    assert env["MIXVLLM_PROFILE"] == "llama-3.1-405b-instruct-fp8-multinode"
    assert env["VLLM_API_KEY"] == SECRETS["VLLM_API_KEY"]  # the repository root's .env
    # Empty: found from NODE_IP by the launcher, never a guessed eth0.
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == ""
    assert head["healthcheck"]["test"] == [
        "CMD-SHELL", "mixvllm-serve health http://127.0.0.1:$${MODEL_SERVER_PORT}",
    ]  # fmt: skip
    assert env["MODEL_SERVER_PORT"] == "8000"
    argv = launcher_argv(env, tmp_path)
    assert argv[1:3] == ["serve", "meta-llama/Llama-3.1-405B-Instruct-FP8"]
    assert (flag(argv, "--tensor-parallel-size"), flag(argv, "--pipeline-parallel-size")) == (
        "8", "2",
    )  # fmt: skip
    assert argv[-6:] == ["--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1"]
    assert flag(argv, "--distributed-executor-backend") == "mp"  # no Ray in the image


def test_multinode_worker_joins_the_head_headless(multinode_stack: Path, tmp_path: Path) -> None:
    node = {"NODE_IP": "127.0.0.1", "HEAD_IP": "127.0.0.1", "NODE_RANK": "1"}
    data = render(multinode_stack, *MULTINODE, "--profile", "worker", env=node)
    worker = data["services"]["worker"]
    env = worker["environment"]
    assert (env["NODE_RANK"], env["MASTER_ADDR"], env["VLLM_HOST_IP"]) == ("1", "127.0.0.1",
                                                                          "127.0.0.1")  # fmt: skip
    assert worker["healthcheck"] == {"disable": True}  # headless: no API to check
    argv = launcher_argv(env, tmp_path)
    assert argv[-7:] == ["--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1",
                         "--headless"]  # fmt: skip


def test_every_model_node_keeps_its_downloads_in_the_cache_volume(
    multinode_stack: Path,
) -> None:
    """The image runs as an unprivileged user whose Hugging Face cache is HF_HOME: a volume
    mounted anywhere else leaves each download in the container, lost on the next `up`."""
    hf_home = re.search(r"HF_HOME=(\S+)", (ROOT / "Dockerfile.model").read_text())
    assert hf_home is not None
    node = {"NODE_IP": "127.0.0.1", "HEAD_IP": "127.0.0.1"}
    services = [
        render(multinode_stack, *MULTINODE, "--profile", role, env=node)["services"][role]
        for role in ("head", "worker")
    ]
    services.append(render(multinode_stack)["services"]["model-server"])
    for service in services:
        mounts = {v["source"]: v["target"] for v in service["volumes"] if v["type"] == "volume"}
        assert mounts.get("hf-cache") == hf_home.group(1), service["volumes"]


def test_multinode_ports_are_documented_as_private() -> None:
    doc = section(ROOT / "docs" / "deployment-scale-out.md", "Model tier: several nodes")
    assert "no authentication" in doc
    assert "private network" in doc
    assert "29501" in doc  # the master port the workers connect to


# --- 3. every documented command works as written, from the repository root ------------

DOCS = [*pages(), *sorted((ROOT / "deploy").glob("*.yml"))]


def documented_compose_commands() -> list[tuple[str, str]]:
    """(where, command) for every `docker compose ... up` line in the docs and file headers,
    backslash continuations joined, comment markers stripped."""
    found = []
    for path in DOCS:
        text = path.read_text()
        if path.suffix == ".yml":
            text = "\n".join(re.sub(r"^#\s?", "", line) for line in text.splitlines()
                             if line.startswith("#"))  # fmt: skip
        else:  # the code blocks only
            text = "\n".join(re.findall(r"^\s*```\w*\n(.*?)^\s*```", text, re.M | re.S))
        text = re.sub(r"\\\n\s*(#\s*)?", " ", text)
        for line in text.splitlines():
            command = line.strip().lstrip("$ ").strip()
            if re.search(r"\bdocker compose\b.* up\b", command) and not command.startswith("#"):
                found.append((path.name, re.sub(r"\s+#.*$", "", command)))
    return found


def test_documented_commands_are_found() -> None:
    commands = [c for _, c in documented_compose_commands()]
    assert any("compose.multinode.yml --profile head" in c for c in commands)
    assert any("--profile worker" in c for c in commands)
    assert any("compose.terminal-replicas.yml" in c for c in commands)


@pytest.mark.parametrize(("where", "command"), documented_compose_commands())
def test_documented_command_renders_from_the_repository_root(
    where: str, command: str, tmp_path: Path
) -> None:
    stack = checkout(tmp_path)
    # Everything after `up` is for `up`; `config` renders what it would start.
    rendered = re.sub(r"\s+up\b.*$", " config --format json", command)
    done = shell(rendered, cwd=stack)
    assert done.returncode == 0, f"{where}: {command}\n{done.stderr}"
    assert SECRETS["VLLM_API_KEY"] in done.stdout  # read the repository root's .env


# --- 6. terminal replicas ---------------------------------------------------------------


def test_replicas_share_the_model_servers_network(tmp_path: Path) -> None:
    data = render(checkout(tmp_path), *REPLICAS)
    services = data["services"]
    terminal, model, proxy = (
        services["terminal-server"],
        services["model-server"],
        services["proxy"],
    )
    assert set(terminal["networks"]) & set(model["networks"])
    assert urlsplit(terminal["environment"]["MODEL_SERVER_URL"]).hostname == "model-server"
    assert terminal["deploy"]["replicas"] == 3
    assert not terminal.get("ports")  # only the proxy is published
    assert [p["published"] for p in proxy["ports"]] == ["8888"]
    assert (
        proxy["environment"]["PROXY_COOKIE_KEY"] != proxy["environment"]["MIXVLLM_TERMINAL_TOKEN"]
    )
    (cfg,) = proxy["volumes"]
    assert Path(cfg["source"]) == tmp_path / "deploy" / "haproxy.cfg"
    # A remote model server: MODEL_SERVER_URL in .env.
    remote = checkout(tmp_path / "remote", MODEL_SERVER_URL="http://10.0.0.1:8000/v1")
    url = render(remote, *REPLICAS)["services"]["terminal-server"]["environment"]
    assert url["MODEL_SERVER_URL"] == "http://10.0.0.1:8000/v1"


HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"


def haproxy_check(cfg: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    require(os.access(binary, os.X_OK), "haproxy is not installed (apt-get install haproxy)")
    env = {"PATH": os.environ["PATH"], "MIXVLLM_TERMINAL_TOKEN": "t", "PROXY_COOKIE_KEY": "c"}
    return subprocess.run([binary, "-c", "-f", str(cfg)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_haproxy_accepts_its_configuration(tmp_path: Path) -> None:
    done = haproxy_check(HAPROXY_CFG)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(HAPROXY_CFG.read_text().replace("timeout http-request", "timeout http-req"))
    assert haproxy_check(broken).returncode != 0  # the check can fail


def test_haproxy_hardening() -> None:
    lines = [line.split("#", 1)[0].split() for line in HAPROXY_CFG.read_text().splitlines()]
    directives = [" ".join(words) for words in lines if words]
    for needed in ("option forwardfor", "timeout http-request 10s", "timeout client-fin 30s",
                   "timeout server-fin 30s", "timeout tunnel 12h"):  # fmt: skip
        assert needed in directives
    (cookie,) = [d for d in directives if d.startswith("cookie MIXVLLM_REPLICA")]
    assert {"insert", "httponly", "secure", "dynamic"} <= set(cookie.split())
    assert 'dynamic-cookie-key "${PROXY_COOKIE_KEY}"' in directives
    assert (
        "server-template term 1-16 terminal-server:8888 check resolvers docker init-addr none"
        in (directives)
    )


# --- 4. the model's health check: still loading is not broken ---------------------------


def compose_health_command(tmp_path: Path, port: int) -> list[str]:
    test = render(checkout(tmp_path))["services"]["model-server"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in test[1:]]


def run_health(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIXVLLM_STATE_DIR": str(tmp_path / "s")}
    serve_bin = Path(sys.executable).with_name(argv[0])
    return subprocess.run([str(serve_bin), *argv[1:]], env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_compose_health_check_passes_while_the_model_loads(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: a download or load in progress
    done = run_health(compose_health_command(tmp_path, port), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    with fake_model_server(port, ready=False):  # /health 503: the engine died
        assert run_health(compose_health_command(tmp_path, port), tmp_path).returncode == 1
