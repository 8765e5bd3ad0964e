"""docker-compose.yml against the compose-spec JSON schema, plus what the schema can't know.

The schema is the one vendored inside check-jsonschema (`vendor.compose-spec`): nothing is
fetched at test time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_server import profiles

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    if not CHECK_JSONSCHEMA.exists():
        pytest.fail(f"{CHECK_JSONSCHEMA} missing: pip install -e '.[dev]'", pytrace=False)
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_file_matches_the_compose_spec() -> None:
    result = validate(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = COMPOSE.read_text().replace("condition: service_started", "condition: when_ready")
    assert broken != COMPOSE.read_text()
    path = tmp_path / "docker-compose.yml"
    path.write_text(broken)
    result = validate(path)
    assert result.returncode == 1
    assert "when_ready" in result.stdout + result.stderr


def test_model_server_service(compose: dict[str, Any]) -> None:
    svc = compose["services"]["model-server"]
    assert svc["build"]["dockerfile"] == "Dockerfile.model"
    assert svc["ipc"] == "host"
    env = svc["environment"]
    # Unset or empty: the profile's value (tests below render every profile).
    assert env["TENSOR_PARALLEL_SIZE"] == "${TENSOR_PARALLEL_SIZE:-}"
    assert env["PIPELINE_PARALLEL_SIZE"] == "${PIPELINE_PARALLEL_SIZE:-}"
    assert env["HF_TOKEN"].startswith("${HF_TOKEN")
    assert env["VLLM_API_KEY"].startswith("${VLLM_API_KEY:?")  # required, never defaulted
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device["count"].startswith("${GPU_COUNT")
    # The image runs as uid 10001 (not root), whose home holds the cache.
    assert any(v.endswith(":/home/mixvllm/.cache/huggingface") for v in svc["volumes"])
    health = svc["healthcheck"]
    assert health["test"] == ["CMD", "mixvllm-serve", "health", "http://127.0.0.1:8000"]
    assert health["start_interval"] == "5s"
    # The model API is published on loopback only.
    assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"])


def test_terminal_server_service(compose: dict[str, Any]) -> None:
    svc = compose["services"]["terminal-server"]
    assert svc["build"]["dockerfile"] == "Dockerfile.terminal"
    env = svc["environment"]
    assert env["MODEL_SERVER_URL"] == "http://model-server:8000/v1"
    assert env["MIXVLLM_TERMINAL_TOKEN"].startswith("${MIXVLLM_TERMINAL_TOKEN:?")
    assert env["VLLM_API_KEY"] == compose["services"]["model-server"]["environment"]["VLLM_API_KEY"]
    # Started at once: the status bar and `chat --wait` show the model while it loads.
    assert svc["depends_on"] == {"model-server": {"condition": "service_started"}}
    assert any(str(p).endswith(":8888") for p in svc["ports"])
    public = env["MIXVLLM_TERMINAL_PUBLIC_URL"]
    assert public.startswith(
        "${MIXVLLM_TERMINAL_PUBLIC_URL:-http://localhost:${TERMINAL_PUBLISH_PORT"
    )


def test_terminal_server_is_hardened_and_keeps_its_home(compose: dict[str, Any]) -> None:
    svc = compose["services"]["terminal-server"]
    assert svc["init"] is True  # a signal-aware PID 1: `docker stop` does not wait 10 s
    assert svc["read_only"] is True
    assert svc["tmpfs"] == ["/tmp"]
    assert svc["cap_drop"] == ["ALL"]
    assert sorted(svc["cap_add"]) == ["CHOWN", "KILL", "SETGID", "SETUID"]  # --session-user's
    assert svc["environment"]["MIXVLLM_TERMINAL_SESSION_USER"] == "chat"
    assert "no-new-privileges:true" in svc["security_opt"]
    assert "terminal-home:/home/chat" in svc["volumes"]  # saved conversations survive
    assert "terminal-home" in compose["volumes"]
    assert compose["services"]["model-server"]["init"] is True


class _ResetLoader(yaml.SafeLoader):
    """Compose's `!reset` tag, kept as a marker; `!override` is the value it tags."""


_ResetLoader.add_constructor("!reset", lambda loader, node: "!reset")
_ResetLoader.add_constructor(
    "!override",
    lambda loader, node: (
        loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_sequence(node, deep=True)
    ),
)


def test_cpu_override_swaps_in_the_embedded_engine() -> None:
    cpu = yaml.load((ROOT / "docker-compose.cpu.yml").read_text(), Loader=_ResetLoader)
    svc = cpu["services"]["model-server"]
    assert svc["build"]["dockerfile"] == "Dockerfile.model-cpu"
    assert (ROOT / "Dockerfile.model-cpu").exists()
    assert svc["image"].startswith("mixvllm-model-server-cpu:")
    assert svc["environment"]["MIXVLLM_PROFILE"] == "embedded"
    assert profiles.load("embedded").engine == "llama.cpp"
    assert svc["deploy"] == "!reset"  # no GPU reservation
    # Engines before 25 (Debian's docker.io, which CI runs) refuse start_interval.
    assert svc["healthcheck"]["start_interval"] == "!reset"


COMPOSE_FILES = [COMPOSE, *sorted((ROOT / "deploy").glob("*.yml"))]


def test_every_variable_is_documented_in_env_example() -> None:
    per_node = {"NODE_IP", "HEAD_IP", "NODE_RANK"}  # differ per node: set on the command line
    used = {name for path in COMPOSE_FILES
            for name in re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", path.read_text())}  # fmt: skip
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert used - per_node <= documented, f"not in .env.example: {sorted(used - documented)}"
    assert documented <= used, f"unused in the compose files: {sorted(documented - used)}"
    assert per_node <= used


def test_multinode_compose_file_matches_the_compose_spec() -> None:
    result = validate(ROOT / "deploy" / "compose.multinode.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_terminal_image_is_mixvllm_terminal_wired_to_the_model_server() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    terminal = compose["services"]["terminal-server"]
    assert terminal["image"].split(":")[0] == "mixvllm-terminal"
    assert terminal["environment"]["MODEL_SERVER_URL"].startswith("http://model-server:8000")


def _services(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_ResetLoader)
    assert isinstance(data, dict)
    return dict(data.get("services", {}))


def test_every_service_rotates_its_log() -> None:
    """Each service a compose file starts (an overlay's own ones included) keeps its log
    bounded; an overlay's service that is also in docker-compose.yml inherits it."""
    base = _services(COMPOSE)
    files = [*COMPOSE_FILES, ROOT / "docker-compose.cpu.yml"]
    checked = []
    for path in files:
        for name, svc in _services(path).items():
            if path != COMPOSE and name in base:
                assert "logging" not in svc or svc["logging"] == base[name]["logging"]
                continue
            logging = svc.get("logging", {})
            assert logging.get("driver") == "json-file", f"{path.name}: {name}"
            assert re.fullmatch(r"\d+m", logging["options"]["max-size"]), f"{path.name}: {name}"
            assert int(logging["options"]["max-file"]) <= 5, f"{path.name}: {name}"
            checked.append(name)
    assert {"model-server", "terminal-server", "prometheus", "proxy", "head", "worker"} <= set(
        checked
    )
