"""`mixvllm-serve up`: the model server and the terminal server together, as one command.

Each child runs in its own process group, so Ctrl-C reaches only this supervisor, which
then stops the terminal first and the model server second (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import IO, NoReturn

from mixvllm_common import defaults, names
from mixvllm_common.options import Option, OptionError, add_to_parser, integer, number, resolve
from mixvllm_common.state import state_dir
from model_server import config, health
from model_server.errors import LauncherError

STOP_GRACE_S = 10.0
_PORT = integer(1, 65535, "a port number")
_TERMINAL = defaults.TERMINAL_ENV_PREFIX
# The terminal's options share its env vars, so `up` and `mixvllm-terminal` read the same.
OPTIONS: tuple[Option, ...] = (
    config.PROFILE,
    replace(config.PORT, dest="model_port", flags=("--model-port",), kind=_PORT,
            help="model server port"),
    Option("terminal_host", ("--terminal-host",), (_TERMINAL + "HOST",), str,
           defaults.DEFAULT_TERMINAL_HOST, "terminal bind address", "HOST"),
    Option("terminal_port", ("--terminal-port",), (_TERMINAL + "PORT",), _PORT,
           defaults.DEFAULT_TERMINAL_PORT, "terminal port", "PORT"),
    Option("timeout", ("--timeout",), ("MIXVLLM_MODEL_TIMEOUT",),
           number(0, what="a positive number"), 600.0,
           "seconds to wait for the model's first answer", "SECONDS"),
    Option("token", (), (_TERMINAL + "TOKEN",), str, None,
           "terminal token (printed in the URL)", shown_default="new each run"),
)  # fmt: skip


class UpError(LauncherError):
    """A child failed to start or died."""


class _Stop(Exception):
    """Raised from the signal handler to unwind whatever the main thread is doing."""


@dataclass(frozen=True)
class UpConfig:
    profile_args: argparse.Namespace
    model_host: str
    model_port: int
    terminal_host: str
    terminal_port: int
    token: str
    api_key: str
    timeout: float
    log_dir: Path


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_to_parser(parser, OPTIONS)


def build(args: argparse.Namespace, env: Mapping[str, str]) -> UpConfig:
    try:
        v = resolve(OPTIONS, env, args)
    except OptionError as exc:
        raise config.ConfigError(str(exc)) from exc
    profile_args = argparse.Namespace(profile=v["profile"], port=v["model_port"])
    profile = config.load_profile(profile_args, env)
    api_key, _ = config.resolve_api_key(env)
    return UpConfig(
        profile_args=profile_args,
        model_host=profile.host,
        model_port=profile.port,
        terminal_host=v["terminal_host"],
        terminal_port=v["terminal_port"],
        token=v["token"] or secrets.token_urlsafe(24),
        api_key=api_key,
        timeout=v["timeout"],
        log_dir=state_dir(env),
    )


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _http_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_port_free(host: str, port: int, what: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UpError(f"{what} port {port} on {host} is not free ({exc.strerror})") from exc


def stop_process(
    proc: subprocess.Popen[bytes],
    grace: float = STOP_GRACE_S,
    steps: Sequence[tuple[signal.Signals, float]] | None = None,
) -> int:
    """Signal the child's process group with escalation (by default SIGTERM, then SIGKILL
    after `grace` seconds), kill whatever is left of the group, and reap the child."""
    for sig, wait_s in steps or ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    # Leftovers of the group (e.g. engine workers) go too.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_tcp(host: str, port: int, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise UpError("the terminal server exited during start-up")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise UpError(f"the terminal server did not listen on {host}:{port} within {timeout:g}s")


def _spawn(cmd: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, its output going to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


def _failed(message: str, log_path: Path) -> UpError:
    return UpError(f"{message}\n--- last lines of {log_path} ---\n{_tail(log_path)}")


def _start_terminal(
    cfg: UpConfig, env: Mapping[str, str], log_path: Path, children: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """Start the terminal server (added to `children` at once) and wait until it listens."""
    cmd = [sys.executable, "-m", "terminal_server"]
    cmd += ["--host", cfg.terminal_host, "--port", str(cfg.terminal_port)]
    # The token goes through the env, not a flag: flags show in `ps`.
    terminal = _spawn(cmd, {**env, _TERMINAL + "TOKEN": cfg.token}, log_path)
    children.append(terminal)
    try:
        _wait_tcp(
            _connect_host(cfg.terminal_host), cfg.terminal_port, 30.0,
            lambda: terminal.poll() is None,
        )  # fmt: skip
    except UpError as exc:
        raise _failed(str(exc), log_path) from exc
    return terminal


def _watch(
    children: Mapping[str, tuple[subprocess.Popen[bytes], Path]], stop: threading.Event
) -> NoReturn:
    """Raise UpError when a child exits; the signal handler ends the wait with _Stop."""
    while True:
        for name, (proc, log_path) in children.items():
            code = proc.poll()
            if code is not None:
                raise _failed(f"the {name} exited unexpectedly (exit code {code})", log_path)
        stop.wait(0.5)


def run(cfg: UpConfig, env: Mapping[str, str], out: IO[str] = sys.stdout) -> int:
    def say(line: str) -> None:
        print(f"mixvllm-serve up: {line}", file=out, flush=True)

    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop_requested.is_set():
            stop_requested.set()
            raise _Stop

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    children: list[subprocess.Popen[bytes]] = []
    model_log = cfg.log_dir / "model-server.log"
    terminal_log = cfg.log_dir / "terminal-server.log"
    try:
        check_port_free(cfg.model_host, cfg.model_port, "model server")
        check_port_free(cfg.terminal_host, cfg.terminal_port, "terminal")
        profile = config.load_profile(cfg.profile_args, env)
        model_url = f"http://{_http_host(_connect_host(cfg.model_host))}:{cfg.model_port}/v1"
        child_env = {**env, config.API_KEY_ENV: cfg.api_key}

        model_cmd = [sys.executable, "-m", "model_server", "--port", str(cfg.model_port)]
        model_cmd += ["--profile", cfg.profile_args.profile]
        say(f"starting model server {profile.name!r} at {model_url} (log: {model_log})")
        model = _spawn(model_cmd, child_env, model_log)
        children.append(model)
        try:
            health.wait(
                model_url, timeout=cfg.timeout, api_key=cfg.api_key, progress=say,
                alive=lambda: model.poll() is None,
            )  # fmt: skip
            health.first_answer(model_url, model=profile.served_model_name, api_key=cfg.api_key)
        except health.NotReady as exc:
            raise _failed(str(exc), model_log) from exc
        say(f"model {profile.served_model_name!r} answers")

        terminal_env = {**child_env, defaults.MODEL_SERVER_URL_ENV: model_url}
        if profile.max_model_len and names.CHAT_CONTEXT_LENGTH_ENV not in env:
            # chat's footer shows the context in use; an engine that does not report its
            # length (llama.cpp's Python server) leaves chat to learn it from here.
            terminal_env[names.CHAT_CONTEXT_LENGTH_ENV] = str(profile.max_model_len)
        terminal = _start_terminal(cfg, terminal_env, terminal_log, children)
        host = _http_host(_connect_host(cfg.terminal_host))
        say(f"terminal ready: http://{host}:{cfg.terminal_port}/?token={cfg.token}")
        say(f"terminal log: {terminal_log}; press Ctrl-C to stop both servers")
        _watch({"model server": (model, model_log), "terminal server": (terminal, terminal_log)},
               stop_requested)  # fmt: skip
    except _Stop:
        say("stopping")
        return 0
    finally:
        for sig in previous:
            signal.signal(sig, lambda s, f: None)  # a second Ctrl-C must not cut the cleanup
        for proc in reversed(children):
            stop_process(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
