"""`wait` against real sockets: a server that comes up late, one that never does, bad keys."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from model_server import health
from tests.support import free_port, wait_for


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers like vLLM (/health) or like llama.cpp (no /health, keyed /v1/models)."""

    server: _Server

    def do_GET(self) -> None:
        srv = self.server
        if self.path == "/health" and srv.has_health:
            self._reply(200 if srv.ready else 503, srv.health_body)
        elif self.path == "/v1/models":
            if self.headers.get("Authorization") != f"Bearer {srv.key}":
                self._reply(401)
            else:
                self._reply(200 if srv.ready else 503, b'{"data": []}')
        else:
            self._reply(404)

    def _reply(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    has_health = True
    ready = True
    key = "k"
    health_body = b""


@contextmanager
def serve(port: int, **attrs: object) -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", port), _Handler)
    for name, value in attrs.items():
        setattr(srv, name, value)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_waits_for_a_server_that_comes_up_late() -> None:
    port = free_port()
    polls: list[str] = []
    result: dict[str, object] = {}

    def waiter() -> None:
        try:
            result["took"] = health.wait(
                f"http://127.0.0.1:{port}/v1", timeout=60, interval=0.05,
                progress=polls.append, progress_every=0.0,
            )  # fmt: skip
        except health.NotReady as exc:
            result["error"] = exc

    thread = threading.Thread(target=waiter)
    thread.start()
    # Let it see refused connections first, then start the server on that port.
    wait_for(lambda: len(polls) >= 3, 20, "three refused polls")
    assert "connection refused" in polls[-1]
    with serve(port):
        thread.join(30)
    assert "error" not in result, result
    assert isinstance(result["took"], float)


def test_waits_through_503_until_health_is_200() -> None:
    port = free_port()
    polls: list[str] = []
    with serve(port, ready=False) as srv:
        thread = threading.Thread(
            target=health.wait, args=(f"http://127.0.0.1:{port}",),
            kwargs={"timeout": 60, "interval": 0.05, "progress": polls.append,
                    "progress_every": 0.0},
        )  # fmt: skip
        thread.start()
        wait_for(lambda: len(polls) >= 2, 20, "two 503 polls")
        assert "/health: 503" in polls[-1]
        srv.ready = True
        thread.join(30)
        assert not thread.is_alive()


def test_llama_cpp_style_server_is_ready_on_keyed_models() -> None:
    port = free_port()
    with serve(port, has_health=False, key="right"):
        assert health.wait(f"http://127.0.0.1:{port}", timeout=10, api_key="right") >= 0
        with pytest.raises(health.NotReady, match="API key rejected"):
            health.wait(f"http://127.0.0.1:{port}", timeout=30, api_key="wrong")


def test_gives_up_on_a_server_that_never_comes() -> None:
    port = free_port()
    with pytest.raises(health.NotReady) as err:
        health.wait(f"http://127.0.0.1:{port}", timeout=1.0, interval=0.1)
    assert f"http://127.0.0.1:{port} not ready after 1s (last: connection refused)" == str(
        err.value
    )


def test_progress_lines_come_every_progress_every_seconds() -> None:
    port = free_port()
    lines: list[str] = []
    with pytest.raises(health.NotReady):
        health.wait(
            f"http://127.0.0.1:{port}", timeout=1.0, interval=0.05,
            progress=lines.append, progress_every=0.3,
        )  # fmt: skip
    # At 0.3, 0.6 and 0.9 s; a machine stalled for a whole interval may drop one.
    assert 2 <= len(lines) <= 3, lines
    assert all(line.startswith(f"waiting for http://127.0.0.1:{port}: ") for line in lines)
    assert "(connection refused" in lines[-1]


def test_stops_waiting_when_the_server_process_dies() -> None:
    port = free_port()
    with pytest.raises(health.NotReady, match="server process exited"):
        health.wait(f"http://127.0.0.1:{port}", timeout=60, alive=lambda: False)


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_server", "wait", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_cli_wait_never_ready_exits_1_with_one_line() -> None:
    port = free_port()
    result = _cli(f"http://127.0.0.1:{port}/v1", "--timeout", "1.5", "--interval", "0.2")
    assert result.returncode == 1
    # Shorter than the 5 s progress interval: the error is the only line.
    [line] = result.stderr.splitlines()
    assert line.startswith(f"mixvllm-serve: error: http://127.0.0.1:{port} not ready after 1.5s")


def test_cli_wait_ready_exits_0() -> None:
    port = free_port()
    with serve(port):
        result = _cli(f"http://127.0.0.1:{port}/v1", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert "is ready after" in result.stderr


# --- `mixvllm-serve health`: the container's health check ---------------------------------


def _health(url: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MIXVLLM_STATE_DIR": str(state), "VLLM_API_KEY": "k"}
    return subprocess.run(
        [sys.executable, "-m", "model_server", "health", url, "--timeout", "2"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def test_health_is_healthy_while_the_model_is_still_loading(tmp_path: Path) -> None:
    # Nothing listens yet (a download or a load in progress): healthy, however long.
    result = _health(f"http://127.0.0.1:{free_port()}", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("starting: downloading or loading the model")


def test_health_is_healthy_while_llama_server_loads_its_model(tmp_path: Path) -> None:
    loading = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
    port = free_port()
    with serve(port, ready=False, health_body=loading):
        result = _health(f"http://127.0.0.1:{port}", tmp_path)
    assert (result.returncode, result.stdout) == (
        0,
        "starting: downloading or loading the model (/health: 503 (loading the model))\n",
    )


def test_health_is_unhealthy_when_the_server_answers_errors(tmp_path: Path) -> None:
    port = free_port()
    with serve(port, ready=False):  # vLLM's /health is 503 once its engine died
        result = _health(f"http://127.0.0.1:{port}", tmp_path)
    assert result.returncode == 1
    assert result.stdout == "broken: /health: 503\n"
    with serve(port, has_health=False, key="other"):
        result = _health(f"http://127.0.0.1:{port}", tmp_path)
    assert result.returncode == 1
    assert "API key rejected" in result.stdout


def test_health_tells_a_server_that_stopped_answering_from_one_still_loading(
    tmp_path: Path,
) -> None:
    port = free_port()
    with serve(port):
        ready = _health(f"http://127.0.0.1:{port}/v1", tmp_path)
    assert (ready.returncode, ready.stdout) == (0, "ready (/health: 200)\n")
    # Ready once in this run of the container, silent now: broken, not loading.
    gone = _health(f"http://127.0.0.1:{port}", tmp_path)
    assert gone.returncode == 1
    assert gone.stdout.startswith("broken: stopped answering after it was ready")
    # A restarted container (another run id) is loading again.
    (tmp_path / "health-ready").write_text("another-boot/123\n")
    again = _health(f"http://127.0.0.1:{port}", tmp_path)
    assert again.returncode == 0
    assert again.stdout.startswith("starting:")


def test_run_id_names_this_boot_and_pid_1() -> None:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert health.run_id().startswith(boot + "/")
    assert health.run_id() == health.run_id()
