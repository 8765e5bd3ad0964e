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
from typing import Any

ENV_PREFIX = "MIXVLLM_TERMINAL_"
# Variables handed to every session so `chat` finds the model server.
PASSTHROUGH_ENV = ("MODEL_SERVER_URL", "VLLM_API_KEY", "OPENAI_API_KEY")
DEFAULT_MODEL_SERVER_URL = "http://localhost:8000"  # chat's default too


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
    # Polled for the page's status bar; the same URL and key reach `chat` through the env.
    model_server_url: str = DEFAULT_MODEL_SERVER_URL
    model_api_key: str | None = None

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
    # even when the venv is not on PATH. A tab opened while the model loads waits for it.
    beside = Path(sys.executable).with_name("chat")
    return shlex.quote(str(beside) if beside.exists() else "chat") + " --wait 120"


def _default_shell(env: Mapping[str, str]) -> str:
    return env.get("SHELL") or shutil.which("bash") or "/bin/sh"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags; each falls back to MIXVLLM_TERMINAL_<NAME> (listed in --help)."""
    p = argparse.ArgumentParser(
        prog="mixvllm-terminal",
        description="Browser terminal: xterm.js over a WebSocket, one PTY per tab.",
    )

    def add(flag: str, help_: str, default: str | None, **kw: Any) -> None:
        name = flag.lstrip("-").replace("-", "_").upper()
        value = env.get(ENV_PREFIX + name, default)
        if value is not None and kw.get("type") in (int, float):
            value = kw["type"](value)  # a malformed value raises ValueError -> ConfigError
        shown = f" (default: {default})" if default else ""
        p.add_argument(flag, default=value, help=f"{help_} [${ENV_PREFIX}{name}]{shown}", **kw)

    add("--host", "bind address", "127.0.0.1")
    add("--port", "TCP port; 0 picks a free one", "8888", type=int)
    auto = _env_bool(env.get(ENV_PREFIX + "AUTOSTART_CHAT", "1"))
    chat = p.add_mutually_exclusive_group()
    chat.add_argument(
        "--autostart-chat",
        dest="autostart_chat",
        action="store_true",
        default=auto,
        help=f"start `chat` in each new session; the shell follows when it exits "
        f"[${ENV_PREFIX}AUTOSTART_CHAT=1|0] (default: on)",
    )
    chat.add_argument(
        "--no-autostart-chat",
        dest="autostart_chat",
        action="store_false",
        help="sessions start the shell directly",
    )
    add("--chat-command", "chat command line", _default_chat())
    add("--shell", "shell command line per session", _default_shell(env))
    add("--token", "access token, at least 8 characters (default: generated, printed)", None)
    p.add_argument(
        "--no-auth",
        action="store_true",
        default=_env_bool(env.get(ENV_PREFIX + "NO_AUTH", "0")),
        help=f"disable the token; only allowed on a loopback address [${ENV_PREFIX}NO_AUTH=1]",
    )
    add("--max-sessions", "sessions at most; the next one is refused", "32", type=int)
    add("--base-path", "URL prefix when served behind a reverse proxy", "/")
    add("--certfile", "TLS certificate (PEM); serves https", None)
    add("--keyfile", "TLS private key (PEM)", None)
    add("--allowed-origins", "comma-separated extra WebSocket origins", "")
    add("--idle-timeout", "seconds a session lives without a client", "600", type=float)
    add("--scrollback-bytes", "recent output kept per session, replayed on reattach",
        str(256 * 1024), type=int)  # fmt: skip
    add("--flow-window", "unacknowledged output bytes per client before the PTY pauses",
        str(256 * 1024), type=int)  # fmt: skip
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
        model_server_url=env.get("MODEL_SERVER_URL") or DEFAULT_MODEL_SERVER_URL,
        model_api_key=env.get("VLLM_API_KEY") or env.get("OPENAI_API_KEY") or None,
    )
