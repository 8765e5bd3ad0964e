"""The terminal image's HEALTHCHECK, run as Docker runs it, against real servers started the
ways a deployment starts them: a generated token, a port given as an argument, a base path,
TLS. Each must report healthy while the server is up and unhealthy once it is gone."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from terminal_server.healthcheck import check, server_args
from tests.embedded_server import free_port

ROOT = Path(__file__).resolve().parent.parent
SHELL = ["--no-autostart-chat", "--shell", "/bin/bash --norc --noprofile"]


def healthcheck_command() -> list[str]:
    text = (ROOT / "Dockerfile.terminal").read_text().replace("\\\n", " ")
    (line,) = [x for x in text.splitlines() if x.startswith("HEALTHCHECK ")]
    cmd: list[str] = json.loads(line.split(" CMD ", 1)[1])
    return [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]


@contextmanager
def server(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "terminal_server", *SHELL, *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        assert re.search(r"open https?://", proc.stdout.readline())
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        proc.stdout.close()


def run_check(proc: subprocess.Popen[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*healthcheck_command(), "--pid", str(proc.pid)],
        cwd="/", env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def _container_env(**more: str) -> dict[str, str]:
    """What Docker gives both the server and the check: the image's env plus compose's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXVLLM_TERMINAL_")}
    return {**env, "PYTHONPATH": str(ROOT), **more}


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed: cannot make a test certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=terminal.example", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


def test_generated_token() -> None:
    env = _container_env(MIXVLLM_TERMINAL_PORT=str(free_port()))
    with server([], env) as proc:
        result = run_check(proc, env)
        assert result.returncode == 0, result.stderr
    result = run_check(proc, env)
    assert result.returncode == 1


@pytest.mark.parametrize(
    "args",
    [["--port", "{port}"], ["--port", "{port}", "--base-path", "/term"]],
    ids=["port-argument", "base-path"],
)
def test_flags_given_as_arguments(args: list[str]) -> None:
    env = _container_env(MIXVLLM_TERMINAL_TOKEN="configured-token")
    port = str(free_port())
    with server([a.format(port=port) for a in args], env) as proc:
        result = run_check(proc, env)
        assert result.returncode == 0, result.stderr


def test_tls(tls_pair: tuple[str, str]) -> None:
    cert, key = tls_pair
    env = _container_env(MIXVLLM_TERMINAL_CERTFILE=cert, MIXVLLM_TERMINAL_KEYFILE=key)
    with server(["--port", str(free_port())], env) as proc:
        result = run_check(proc, env)
        assert result.returncode == 0, result.stderr


def test_any_answer_is_not_enough() -> None:
    """A 404 (the check got the base path wrong) is unhealthy; the command line wins over env."""
    env = _container_env(MIXVLLM_TERMINAL_TOKEN="configured-token")
    port = str(free_port())
    with server(["--port", port, "--base-path", "/term"], env) as proc:
        result = run_check(proc, {**env, "MIXVLLM_TERMINAL_BASE_PATH": "/other"})
        assert result.returncode == 0, result.stderr
        assert check(["--port", port, "--base-path", "/term"], {}) is None
        problem = check(["--port", port, "--base-path", "/x"], {})
        assert problem is not None and problem.endswith("/x/healthz: HTTP 404"), problem


def test_server_args_from_a_command_line() -> None:
    venv = "/opt/venv/bin/python"
    assert server_args([venv, "/opt/venv/bin/mixvllm-terminal", "--port", "9"]) == ["--port", "9"]
    assert server_args(["python3", "-m", "terminal_server"]) == []
    assert server_args(["python3", "-m", "chat_cli"]) is None
    assert server_args(["bash"]) is None
