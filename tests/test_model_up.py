"""`mixvllm-serve up`: the real embedded model server and the real terminal server together."""

from __future__ import annotations

import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from model_server import config, health
from model_server import up as up_module
from model_server.__main__ import build_parser
from tests.conftest import require
from tests.embedded_server import installed as embedded_installed
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
XTERM = ROOT / "static" / "node_modules" / "@xterm" / "xterm" / "lib" / "xterm.js"


@dataclass
class Up:
    proc: subprocess.Popen[str]
    lines: queue.Queue[str]
    seen: list[str]
    model_port: int
    terminal_port: int
    api_key: str
    reader: threading.Thread

    def expect(self, fragment: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no line with {fragment!r}; output so far:\n" + "".join(self.seen))

    def rest(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[object]:
    started: list[Up] = []

    def start(*extra: str, env_extra: dict[str, str] | None = None) -> Up:
        model_port, terminal_port = free_port(), free_port()
        key = secrets.token_urlsafe(16)
        env = {**os.environ, "VLLM_API_KEY": key, "MIXVLLM_STATE_DIR": str(tmp_path / "state"),
               "HOME": str(tmp_path), **(env_extra or {})}  # fmt: skip
        cmd = [sys.executable, "-m", "model_server", "up", "--model-port", str(model_port),
               "--terminal-port", str(terminal_port), *extra]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        up = Up(proc, lines, [], model_port, terminal_port, key, reader)
        started.append(up)
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            for child in psutil.Process(up.proc.pid).children(recursive=True):
                child.kill()
            os.killpg(up.proc.pid, signal.SIGKILL)
        up.proc.wait(30)
        up.reader.join(10)
        assert up.proc.stdout is not None
        up.proc.stdout.close()


@pytest.mark.embedded
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_runs_both_and_stops_cleanly(start_up: object, sig: signal.Signals) -> None:
    ok, why = embedded_installed()
    require(ok, why)
    require(XTERM.is_file(), f"{XTERM} missing: run `make static`")
    up: Up = start_up()  # type: ignore[operator]
    line = up.expect("mixvllm-serve up: terminal ready: ")
    url = line.split("ready: ", 1)[1].strip()
    assert url.startswith(f"http://127.0.0.1:{up.terminal_port}/?token=")
    token = url.split("token=", 1)[1]

    # The model really answers, with the key `up` handed out.
    model_url = f"http://127.0.0.1:{up.model_port}/v1"
    assert health.first_answer(model_url, model="smollm2-135m-instruct", api_key=up.api_key)
    # The terminal serves with the printed token ...
    healthz = httpx.get(
        f"http://127.0.0.1:{up.terminal_port}/healthz",
        headers={"Authorization": f"Bearer {token}"}, timeout=10,
    )  # fmt: skip
    assert healthz.status_code == 200
    # ... and hands its sessions the model's URL and key.
    children = psutil.Process(up.proc.pid).children(recursive=True)
    terminal = [c for c in children if "terminal_server" in " ".join(c.cmdline())]
    assert len(terminal) == 1
    terminal_env = terminal[0].environ()
    assert terminal_env["MODEL_SERVER_URL"] == model_url
    assert terminal_env["VLLM_API_KEY"] == up.api_key
    assert terminal_env["CHAT_CONTEXT_LENGTH"] == "4096"  # the profile's: chat's footer shows it

    up.proc.send_signal(sig)
    assert up.proc.wait(60) == 0, up.rest()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"
    for port in (up.model_port, up.terminal_port):
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    assert "stopping" in up.rest()


def test_up_refuses_a_busy_model_port(start_up: object) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up: Up = start_up("--model-port", str(port))  # type: ignore[operator]
        assert up.proc.wait(60) == 1
    out = up.rest()
    assert f"mixvllm-serve: error: model server port {port} on 127.0.0.1 is not free" in out
    assert "Traceback" not in out


def test_up_reports_a_model_server_that_cannot_start(start_up: object, tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    up: Up = start_up(env_extra={"MODEL": str(missing)})  # type: ignore[operator]
    assert up.proc.wait(60) == 1
    out = up.rest()
    assert "the server process exited" in out
    # The model server's own error line comes with it, from its log.
    assert f"model path {missing} does not exist" in out
    assert "Traceback" not in out


def _up_config(argv: list[str], env: dict[str, str]) -> up_module.UpConfig:
    args = build_parser().parse_args(["up", *argv])
    return up_module.build(args, env)


def test_up_flags_fall_back_to_env(tmp_path: Path) -> None:
    env = {"MIXVLLM_STATE_DIR": str(tmp_path), "VLLM_API_KEY": "k",
           "MIXVLLM_PROFILE": "cpu-vllm", "MODEL_SERVER_PORT": "9100",
           "MIXVLLM_TERMINAL_PORT": "9101", "MIXVLLM_TERMINAL_TOKEN": "tok-12345",
           "MIXVLLM_MODEL_TIMEOUT": "42"}  # fmt: skip
    cfg = _up_config([], env)
    assert (cfg.model_port, cfg.terminal_port, cfg.token, cfg.timeout) == (
        9100,
        9101,
        "tok-12345",
        42,
    )
    assert cfg.api_key == "k"
    assert config.load_profile(cfg.profile_args, env).name == "cpu-vllm"
    flags = ["--profile", "embedded", "--model-port", "9200", "--terminal-port", "9201"]
    cfg = _up_config([*flags, "--timeout", "5"], env)
    assert (cfg.model_port, cfg.terminal_port, cfg.timeout) == (9200, 9201, 5)
    assert config.load_profile(cfg.profile_args, env).name == "embedded"


def test_up_generates_a_token_and_defaults_to_the_embedded_profile(tmp_path: Path) -> None:
    env = {"MIXVLLM_STATE_DIR": str(tmp_path)}
    cfg = _up_config([], env)
    assert (cfg.model_port, cfg.terminal_port, cfg.terminal_host) == (8000, 8888, "127.0.0.1")
    assert len(cfg.token) >= 24
    # No VLLM_API_KEY: the local key, the one `mixvllm-serve key` prints.
    assert cfg.api_key == config.resolve_api_key(env, create=False)[0]
    assert config.load_profile(cfg.profile_args, env).name == "embedded"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--terminal-port", "http"], "--terminal-port: must be a port number"),
        (["--model-port", "99999"], "--model-port: must be a port number 1..65535"),
        (["--timeout", "-1"], "--timeout: must be a positive number"),
        (["--profile", "nope"], "unknown profile 'nope'"),
    ],
)
def test_up_bad_values_are_one_line_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    env = {**os.environ, "MIXVLLM_STATE_DIR": str(tmp_path), "VLLM_API_KEY": "k"}
    result = subprocess.run(
        [sys.executable, "-m", "model_server", "up", *argv],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("mixvllm-serve: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.embedded
@pytest.mark.slow
def test_up_stops_everything_when_the_model_server_dies(start_up: object) -> None:
    ok, why = embedded_installed()
    require(ok, why)
    require(XTERM.is_file(), f"{XTERM} missing: run `make static`")
    up: Up = start_up()  # type: ignore[operator]
    up.expect("mixvllm-serve up: terminal ready: ")
    children = psutil.Process(up.proc.pid).children(recursive=True)
    (model,) = [c for c in children if "model_server.embedded" in c.cmdline()]
    model.kill()
    assert up.proc.wait(60) == 1
    out = up.rest()
    assert "mixvllm-serve: error: the model server exited unexpectedly (exit code -9)" in out
    assert "Traceback" not in out
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"
