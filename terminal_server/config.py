"""Configuration: one frozen dataclass, built once from flags with environment fallbacks."""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "MIXVLLM_TERMINAL_"
# Variables handed to every session so `chat` finds the model server.
PASSTHROUGH_ENV = ("MODEL_SERVER_URL", "VLLM_API_KEY", "OPENAI_API_KEY")


class ConfigError(ValueError):
    """Invalid configuration; the message is shown to the operator as is."""


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8888
    autostart_chat: bool = True
    chat_command: tuple[str, ...] = ("chat",)
    shell: tuple[str, ...] = ("/bin/bash",)
    token: str | None = None  # None: generate one at start
    no_auth: bool = False
    max_sessions: int = 32
    base_path: str = "/"
    certfile: str | None = None
    keyfile: str | None = None
    allowed_origins: tuple[str, ...] = ()
    idle_timeout: float = 600.0  # seconds a session lives without a client
    scrollback_bytes: int = 256 * 1024  # replayed on reattach
    flow_window: int = 256 * 1024  # unacknowledged output per client
    max_message_bytes: int = 1024 * 1024
    cwd: str = str(Path.home())

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _env_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {value!r}")


def _default_chat() -> str:
    # Prefer the `chat` installed next to this interpreter (the venv), so sessions find it
    # even when the venv is not on PATH.
    beside = Path(sys.executable).with_name("chat")
    return str(beside) if beside.exists() else "chat"


def _default_shell(env: Mapping[str, str]) -> str:
    return env.get("SHELL") or shutil.which("bash") or "/bin/sh"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def e(name: str, default: str | None = None) -> str | None:
        return env.get(ENV_PREFIX + name, default)

    p = argparse.ArgumentParser(
        prog="mixvllm-terminal",
        description="Browser terminal: xterm.js over a WebSocket, one PTY per tab.",
    )
    p.add_argument("--host", default=e("HOST", "127.0.0.1"), help="bind address")
    p.add_argument(
        "--port", type=int, default=int(e("PORT", "8888") or 8888), help="0 picks a free port"
    )
    chat = p.add_mutually_exclusive_group()
    default_auto = _env_bool(e("AUTOSTART_CHAT", "1") or "1")
    chat.add_argument(
        "--autostart-chat",
        dest="autostart_chat",
        action="store_true",
        default=default_auto,
        help="start `chat` in each new session; the shell follows when it exits (default)",
    )
    chat.add_argument("--no-autostart-chat", dest="autostart_chat", action="store_false")
    p.add_argument(
        "--chat-command", default=e("CHAT_COMMAND") or _default_chat(), help="chat command line"
    )
    p.add_argument(
        "--shell", default=e("SHELL") or _default_shell(env), help="shell command line per session"
    )
    p.add_argument("--token", default=e("TOKEN"), help="access token (default: generated)")
    p.add_argument(
        "--no-auth",
        action="store_true",
        default=_env_bool(e("NO_AUTH", "0") or "0"),
        help="disable the token; only allowed on a loopback address",
    )
    p.add_argument("--max-sessions", type=int, default=int(e("MAX_SESSIONS", "32") or 32))
    p.add_argument("--base-path", default=e("BASE_PATH", "/"), help="URL prefix behind a proxy")
    p.add_argument("--certfile", default=e("CERTFILE"), help="TLS certificate (PEM)")
    p.add_argument("--keyfile", default=e("KEYFILE"), help="TLS private key (PEM)")
    p.add_argument(
        "--allowed-origins",
        default=e("ALLOWED_ORIGINS", ""),
        help="comma-separated extra WebSocket origins, e.g. https://term.example.com",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=float(e("IDLE_TIMEOUT", "600") or 600),
        help="seconds before a session without a client is closed",
    )
    p.add_argument(
        "--scrollback-bytes",
        type=int,
        default=int(e("SCROLLBACK_BYTES", str(256 * 1024)) or 0),
        help="recent output kept per session and replayed on reattach",
    )
    p.add_argument(
        "--flow-window",
        type=int,
        default=int(e("FLOW_WINDOW", str(256 * 1024)) or 0),
        help="unacknowledged output bytes per client before the PTY is paused",
    )
    return p


def _normalize_base(path: str) -> str:
    path = "/" + path.strip("/")
    return path if path == "/" else path + "/"


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse flags (falling back to MIXVLLM_TERMINAL_* variables) into a validated Config."""
    env = os.environ if env is None else env
    try:
        args = build_parser(env).parse_args(argv)
    except ValueError as exc:  # a malformed env value in a default
        raise ConfigError(str(exc)) from exc
    try:
        shell = tuple(shlex.split(args.shell))
        chat_cmd = tuple(shlex.split(args.chat_command))
    except ValueError as exc:
        raise ConfigError(f"cannot parse command line: {exc}") from exc
    if not shell or not chat_cmd:
        raise ConfigError("--shell and --chat-command must not be empty")
    if not 0 <= args.port < 65536:  # 0: any free port (tests, benchmarks)
        raise ConfigError(f"--port out of range: {args.port}")
    if args.max_sessions < 1:
        raise ConfigError("--max-sessions must be at least 1")
    if args.idle_timeout <= 0:
        raise ConfigError("--idle-timeout must be positive")
    if args.flow_window < 4096:
        raise ConfigError("--flow-window must be at least 4096")
    if args.scrollback_bytes < 0:
        raise ConfigError("--scrollback-bytes must not be negative")
    if args.no_auth and not is_loopback_host(args.host):
        raise ConfigError("--no-auth is only allowed on a loopback address (e.g. 127.0.0.1)")
    if args.no_auth and args.token:
        raise ConfigError("--no-auth and --token exclude each other")
    if bool(args.certfile) != bool(args.keyfile):
        raise ConfigError("--certfile and --keyfile go together")
    if args.token is not None and len(args.token) < 8:
        raise ConfigError("--token must be at least 8 characters")
    origins = tuple(o.strip().rstrip("/") for o in args.allowed_origins.split(",") if o.strip())
    return Config(
        host=args.host,
        port=args.port,
        autostart_chat=args.autostart_chat,
        chat_command=chat_cmd,
        shell=shell,
        token=args.token or None,
        no_auth=args.no_auth,
        max_sessions=args.max_sessions,
        base_path=_normalize_base(args.base_path),
        certfile=args.certfile,
        keyfile=args.keyfile,
        allowed_origins=origins,
        idle_timeout=args.idle_timeout,
        scrollback_bytes=args.scrollback_bytes,
        flow_window=args.flow_window,
        cwd=env.get("HOME") or str(Path.home()),
    )
