"""The multi-node recipe for real: deploy/compose.multinode.yml's head and two workers, each
its own compose project as on three machines, started the way docs/deployment-scale-out.md
writes it.

One CPU machine stands in for the cluster: the image is Dockerfile.model on CI's stand-in
base, the engine real vLLM's CPU build (docker/ci/compose.multinode-cpu.yml mounts it), and
the model is split by tensor parallelism over the three nodes. SmolLM2's 9 attention heads
split 3 ways, not 2; vLLM 0.32's CPU pipeline parallelism fails its first request when run
eager, so it is not used here. The head's API answers only once every worker has joined.
Needs a Docker engine and the stand-in image; `make compose-test` provides both."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support import free_port, wait_for
from tests.vllm_cpu import MODEL_DIR, VLLM_VENV, installed

from .browser_support import ROOT
from .test_compose_stack import DOCKER, docker_available

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

IMAGE_TAG = "ci-standin"  # built by docker/ci/compose-test.sh
FILES = ["-f", "deploy/compose.multinode.yml", "-f", "docker/ci/compose.multinode-cpu.yml"]
NODES = 3
READY_S = 420
MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Node:
    rank: int
    project: str
    env: dict[str, str]

    @property
    def role(self) -> str:
        return "head" if self.rank == 0 else "worker"

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`docker compose` as the docs write it, run from the repository root."""
        argv = [DOCKER, "compose", "-p", self.project, "--env-file", self.env["ENV_FILE"]]
        return subprocess.run(
            [*argv, *FILES, "--profile", self.role, *args], cwd=ROOT, env=self.env,
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def logs(self) -> str:
        return self.compose("logs", "--no-color").stdout


def _site_packages() -> Path:
    found = sorted(VLLM_VENV.glob("lib/python3*/site-packages"))
    assert found, f"no site-packages in {VLLM_VENV}"
    return found[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Node], int, str]]:
    require(docker_available(), f"no Docker engine with Compose v2 ({DOCKER}; make compose-test)")
    ok, why = installed()
    require(ok, why)
    image = f"mixvllm-model-server:{IMAGE_TAG}"
    found = subprocess.run([DOCKER, "image", "inspect", image], capture_output=True, check=False)
    require(found.returncode == 0, f"no {image} (make compose-test builds it)")
    key, port, run = secrets.token_urlsafe(24), free_port(), secrets.token_hex(3)
    env_file = tmp_path_factory.mktemp("multinode") / ".env"
    env_file.write_text(f"VLLM_API_KEY={key}\n")
    common = {
        **os.environ,
        "ENV_FILE": str(env_file),
        "MIXVLLM_IMAGE_TAG": IMAGE_TAG,
        "MULTINODE_PROFILE": "cpu-vllm",
        "MULTINODE_NNODES": str(NODES),
        "MULTINODE_TENSOR_PARALLEL_SIZE": str(NODES),
        "MULTINODE_PORT": str(port),
        "NODE_IP": "127.0.0.1",
        "HEAD_IP": "127.0.0.1",
        "VLLM_CPU_SITE_PACKAGES": str(_site_packages()),
        "VLLM_CPU_MODEL_DIR": str(MODEL_DIR),
    }
    nodes = [
        Node(rank, f"mixvllm-ci-mn{rank}-{run}", {**common, "NODE_RANK": str(rank)})
        for rank in range(NODES)
    ]
    started = time.monotonic()
    try:
        for node in nodes:  # node 0 first, as the docs say
            up = node.compose("up", "-d", "--no-build")
            assert up.returncode == 0, up.stdout + up.stderr
        yield nodes, port, key
    finally:
        print(f"compose-test: multi-node: {time.monotonic() - started:.0f} s", file=sys.stderr)
        for node in nodes:
            down = node.compose("down", "-v", "--timeout", "20")
            assert down.returncode == 0, down.stdout + down.stderr
            label = f"label=com.docker.compose.project={node.project}"
            left = subprocess.run(
                [DOCKER, "ps", "-aq", "--filter", label],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout  # fmt: skip
            assert left == ""


# Straight to the containers on this machine, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(port: int, key: str, path: str, body: object = None) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with DIRECT.open(request, timeout=180) as reply:
        answer: dict[str, object] = json.loads(reply.read())
    return answer


def _serving(nodes: list[Node], port: int, key: str) -> bool:
    """The head's API lists the model (every worker joined); fails at once when a node's
    container stopped, crash-loops or turned unhealthy."""
    for node in nodes:
        ps = node.compose("ps", "-a", "--format", "{{.State}} {{.Health}}").stdout
        state, *health = ps.split() or ["missing"]
        assert state == "running" and health != ["unhealthy"], f"{ps}\n{node.logs()[-4000:]}"
    try:
        return bool(_call(port, key, "models")["data"])
    except OSError:  # not listening yet, or still loading (an HTTP error)
        return False


def test_the_workers_join_the_head_and_it_answers(cluster: tuple[list[Node], int, str]) -> None:
    nodes, port, key = cluster
    try:
        wait_for(lambda: _serving(nodes, port, key), READY_S, "the head's API")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(n.logs()[-2000:] for n in nodes)) from None
    health = nodes[0].compose("ps", "--format", "{{.Health}}").stdout.strip()
    assert health in ("healthy", "starting"), health
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8}  # fmt: skip
    try:
        answer = _call(port, key, "chat/completions", body)
    except OSError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(n.logs()[-3000:] for n in nodes)) from None
    choices = answer["choices"]
    assert isinstance(choices, list)
    assert choices[0]["message"]["content"].strip(), answer
    # The model ran split over the three nodes, each worker holding its own rank.
    assert f"-tp{NODES}-" in str(answer.get("system_fingerprint")), answer
    for node in nodes[1:]:
        logs = node.logs()
        assert re.search(rf"world_size={NODES} rank={node.rank}\b", logs), logs[-3000:]
        ps = node.compose("ps", "--format", "{{.Service}} {{.State}}").stdout
        assert ps.split() == ["worker", "running"], ps
