"""Configuration: one frozen dataclass, built once from flags with environment fallbacks."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mixvllm_common import defaults
from mixvllm_common.options import (
    Option,
    OptionError,
    add_to_parser,
    boolean,
    integer,
    resolve,
)
from mixvllm_common.state import state_dir

from .login.oidc_config import OIDC_OPTIONS, OidcConfigError, OidcSettings, oidc_settings
from .model_proxy import options as model_proxy_options
from .option_kit import terminal_option as _opt
from .team import options as team_options

ENV_PREFIX = defaults.TERMINAL_ENV_PREFIX  # session envs drop these (processes.py)
AUTH_MODES = ("token", "proxy", "pam", "oidc")
LOGIN_MODES = ("pam", "oidc")  # users log in on the login page (terminal_server/login/)
TEAM_MODES = ("proxy", *LOGIN_MODES)  # many users, each with sessions of their own
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


class ConfigError(ValueError):
    """Invalid configuration; the message is shown to the operator as is."""


@dataclass(frozen=True)
class Config:
    host: str = defaults.DEFAULT_TERMINAL_HOST
    port: int = defaults.DEFAULT_TERMINAL_PORT
    autostart_chat: bool = True
    chat_command: tuple[str, ...] = ("chat",)
    shell: tuple[str, ...] = ("/bin/bash",)
    token: str | None = None  # None: generate one at start
    no_auth: bool = False
    max_sessions: int = 32
    base_path: str = "/"
    public_url: str | None = None  # what users open, when a proxy or published port differs
    certfile: str | None = None
    keyfile: str | None = None
    allowed_origins: tuple[str, ...] = ()
    idle_timeout: float = 600.0  # seconds a session lives without a client
    ping_interval: float = 30.0  # 0: no pings; a tab silent for one interval is dropped
    scrollback_bytes: int = 256 * 1024  # replayed on reattach
    flow_window: int = 256 * 1024  # unacknowledged output per client
    max_message_bytes: int = 1024 * 1024
    cwd: str = str(Path.home())
    # Polled for the page's status bar; the same URL and key reach `chat` through the env.
    model_server_url: str = defaults.DEFAULT_MODEL_SERVER_URL
    model_api_key: str | None = None
    session_user: str | None = None  # None: sessions run as the server's user
    auth: str = "token"  # "token": one implicit owner; "proxy": users named by a proxy
    proxy_user_header: str = "X-Forwarded-User"
    trusted_proxies: tuple[IPNetwork, ...] = LOOPBACK_NETWORKS
    min_uid: int = 1000  # accounts below it (root, system accounts) never log in
    max_user_sessions: int = 8  # per user, with --auth proxy
    audit_log: Path | None = None  # JSON lines (team/audit.py); None: not kept
    # -- logins (--auth pam|oidc; terminal_server/login/) --
    login_max_age: float = 12 * 3600.0  # seconds a login lasts at most
    login_idle: float = 3600.0  # seconds a login lasts without a request
    max_logins: int = 1000  # logins kept at once; past it the least recently used one ends
    pam_service: str = "mixvllm"
    allowed_users: frozenset[str] = frozenset()  # empty: any account with uid >= min_uid
    allowed_groups: frozenset[str] = frozenset()
    oidc: OidcSettings | None = None  # --auth oidc (login/oidc_config.py)
    # -- admins and per-user limits (team/admins.py, team/limits.py) --
    admin_users: tuple[str, ...] = ()  # with --auth token the owner is the admin
    admin_groups: tuple[str, ...] = ()
    user_max_processes: int = 4096  # RLIMIT_NPROC of a team user's sessions; 0: none
    user_max_memory: int = 0  # bytes per user (cgroup v2) or per process (rlimit); 0: none
    user_idle_timeout: float = 0.0  # seconds without input before a session ends; 0: never
    # The model pass-through of the team modes (model_proxy/).
    user_model_concurrency: int = 4
    user_daily_tokens: int = 0  # 0: no quota
    model_concurrency: int = 64
    model_usage_file: Path | None = None  # None: usage kept in memory only

    @property
    def team(self) -> bool:
        return self.auth in TEAM_MODES

    @property
    def secure_cookies(self) -> bool:
        """Users reach the server over https (its own TLS, or a TLS proxy's public URL)."""
        return self.certfile is not None or (self.public_url or "").startswith("https:")

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"

    @property
    def public_port(self) -> int:
        """The port users reach the server on: the public URL's, else the one it listens on."""
        if not self.public_url:
            return self.port
        url = urlsplit(self.public_url)
        return url.port or (443 if url.scheme == "https" else 80)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _default_chat() -> str:
    # Prefer the `chat` installed next to this interpreter (the venv), so sessions find it
    # even when the venv is not on PATH. A tab opened while the model loads waits for it.
    beside = Path(sys.executable).with_name("chat")
    return shlex.quote(str(beside) if beside.exists() else "chat") + " --wait 120"


def _default_shell(env: Mapping[str, str]) -> str:
    return env.get("SHELL") or shutil.which("bash") or "/bin/sh"


def _auth_mode(text: str) -> str:
    if text not in AUTH_MODES:
        raise ValueError(f"must be one of {', '.join(AUTH_MODES)}")
    return text


def _header_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", text):
        raise ValueError("must be a header name (letters, digits, dashes)")
    return text


def _pam_service(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", text):
        raise ValueError("must be a file name in /etc/pam.d")
    return text


def _names(text: str) -> frozenset[str]:
    return frozenset(p.strip() for p in text.split(",") if p.strip())


def _networks(text: str) -> tuple[IPNetwork, ...]:
    try:
        nets = tuple(ipaddress.ip_network(p.strip()) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise ConfigError(f"--trusted-proxies: not an address or CIDR list ({exc})") from None
    if not nets:
        raise ConfigError("--trusted-proxies must name at least one address or CIDR")
    return nets


OPTIONS: tuple[Option, ...] = (
    _opt("host", str, defaults.DEFAULT_TERMINAL_HOST,
         "bind address; anything but loopback requires the token", metavar="HOST"),
    _opt("port", int, defaults.DEFAULT_TERMINAL_PORT, "TCP port; `0` picks a free one",
         metavar="PORT"),
    _opt("autostart_chat", boolean, True,
         "start `chat` in each new session; the shell follows when it exits",
         off_flag="--no-autostart-chat"),
    _opt("chat_command", str, None,
         "the chat command line; `--wait` lets a tab opened while the model loads wait for it",
         metavar="LINE",
         shown_default="`chat --wait 120` (the `chat` beside the server's Python)"),
    _opt("shell", str, None, "shell command line per session", metavar="LINE",
         shown_default="the `SHELL` variable, else bash"),
    _opt("token", str, None,
         "access token (≥ 8 characters, no spaces) for every request and the WebSocket; "
         "set it with `MIXVLLM_TERMINAL_TOKEN` instead: a flag shows in `ps`",
         metavar="TOKEN", shown_default="generated and printed"),
    _opt("no_auth", boolean, False, "no token; refused unless bound to loopback"),
    _opt("max_sessions", int, 32, "sessions at most; the next one is refused with a message",
         metavar="N"),
    _opt("base_path", str, "/", "URL prefix behind a reverse proxy", metavar="PATH"),
    _opt("public_url", str, None,
         "the URL users open (a published port, a proxy): the banner prints it and the "
         "cookie is named after its port", metavar="URL", shown_default="the bound address"),
    _opt("certfile", str, None, "TLS certificate (PEM); serves https", metavar="FILE"),
    _opt("keyfile", str, None, "TLS private key (PEM)", metavar="FILE"),
    _opt("allowed_origins", str, "",
         "comma-separated extra WebSocket origins (e.g. the proxy's public URL)",
         metavar="ORIGINS"),
    _opt("idle_timeout", float, 600.0, "seconds a session lives without a client",
         metavar="SECONDS"),
    _opt("ping_interval", float, 30.0,
         "seconds between WebSocket pings; a tab that answers none within that time is "
         "dropped and its session kept for reattach; `0`: no pings", metavar="SECONDS"),
    _opt("scrollback_bytes", int, 256 * 1024,
         "recent output kept per session, replayed on reattach", metavar="N"),
    _opt("flow_window", int, 256 * 1024,
         "unacknowledged output bytes per client before the PTY is paused", metavar="N"),
    _opt("session_user", str, None,
         "run sessions as this user (its uid, groups and home), so they cannot read the "
         "server's environment or signal it; needs root or the capabilities SETUID, SETGID, "
         "KILL and CHOWN", metavar="NAME", shown_default="the server's user"),
    _opt("auth", _auth_mode, "token",
         "who may log in: `token` (one owner holding the token), `proxy` (users named by "
         "a trusted reverse proxy's header), `pam` (the box's Unix accounts on a login "
         "page) or `oidc` (an OpenID Connect provider); see docs/team.md", metavar="MODE"),
    _opt("proxy_user_header", _header_name, "X-Forwarded-User",
         "with `--auth proxy`: the header that carries the user name", metavar="NAME"),
    _opt("trusted_proxies", str, "127.0.0.0/8,::1/128",
         "with `--auth proxy`: comma-separated addresses or CIDRs the user header is "
         "accepted from; from any other address it is refused and logged", metavar="CIDRS"),
    _opt("min_uid", integer(0, 2**31, "a uid"), 1000,
         "in team modes (`--auth proxy|pam|oidc`): accounts below this uid (root, system "
         "accounts) never log in",
         metavar="UID"),
    _opt("audit_log", str, None,
         "append logins, session starts and ends, shares, exports and quota refusals "
         "to this file as JSON lines (owner-only); `off`: keep none", metavar="FILE",
         shown_default="`audit.jsonl` in the state directory with a team `--auth` mode, "
         "none with `token`"),
    _opt("max_user_sessions", integer(1, 10_000, "a number"), 8,
         "in team modes: sessions per user at most", metavar="N"),
    # -- logins (terminal_server/login/) --
    _opt("login_max_age", float, 12 * 3600.0,
         "with `--auth pam|oidc`: seconds a login lasts at most; then the user logs in again",
         metavar="SECONDS"),
    _opt("login_idle", float, 3600.0,
         "with `--auth pam|oidc`: seconds a login lasts without a request (an open page "
         "asks for the model's status every few seconds: it keeps its login)",
         metavar="SECONDS"),
    _opt("max_logins", integer(1, 1_000_000, "a number"), 1000,
         "with `--auth pam|oidc`: logins kept at once; past it the least recently used ends",
         metavar="N"),
    _opt("pam_service", _pam_service, "mixvllm",
         "with `--auth pam`: the PAM service (`/etc/pam.d/NAME`); deploy/pam.d/mixvllm "
         "includes common-auth and common-account", metavar="NAME"),
    _opt("allowed_users", str, "",
         "with `--auth pam|oidc`: comma-separated user names that may log in; with "
         "`--allowed-groups` empty too, any account with a uid of at least `--min-uid`",
         metavar="NAMES"),
    _opt("allowed_groups", str, "",
         "with `--auth pam|oidc`: comma-separated groups whose members may log in",
         metavar="GROUPS"),
    *OIDC_OPTIONS,  # --auth oidc: login/oidc_config.py
    *team_options.OPTIONS,  # admins and per-user limits (team/options.py)
    *model_proxy_options.OPTIONS,  # the model pass-through (model_proxy/options.py)
    Option("model_server_url", (), (defaults.MODEL_SERVER_URL_ENV,), str,
           defaults.DEFAULT_MODEL_SERVER_URL,
           "passed through to every session (for `chat`) and polled for the status bar"),
    Option("model_api_key", (), defaults.CLIENT_API_KEY_ENVS, str, None,
           "passed through to every session and sent by the status bar's polls"),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mixvllm-terminal",
        description="Browser terminal: xterm.js over a WebSocket, one PTY per tab.",
    )
    add_to_parser(p, OPTIONS)
    return p


def _normalize_base(path: str) -> str:
    path = "/" + path.strip("/")
    return path if path == "/" else path + "/"


def _check(v: Mapping[str, Any]) -> None:
    if not 0 <= v["port"] < 65536:  # 0: any free port (tests, benchmarks)
        raise ConfigError(f"--port out of range: {v['port']}")
    if v["max_sessions"] < 1:
        raise ConfigError("--max-sessions must be at least 1")
    if v["idle_timeout"] <= 0:
        raise ConfigError("--idle-timeout must be positive")
    if v["ping_interval"] < 0:
        raise ConfigError("--ping-interval must not be negative")
    if v["flow_window"] < 4096:
        raise ConfigError("--flow-window must be at least 4096")
    if v["scrollback_bytes"] < 0:
        raise ConfigError("--scrollback-bytes must not be negative")
    if v["no_auth"] and not is_loopback_host(v["host"]):
        raise ConfigError("--no-auth is only allowed on a loopback address (e.g. 127.0.0.1)")
    if v["no_auth"] and v["token"]:
        raise ConfigError("--no-auth and --token exclude each other")
    if bool(v["certfile"]) != bool(v["keyfile"]):
        raise ConfigError("--certfile and --keyfile go together")
    if v["public_url"] and urlsplit(v["public_url"]).scheme not in ("http", "https"):
        raise ConfigError("--public-url must start with http:// or https://")
    if v["token"] is not None:
        check_token(v["token"])
    _check_auth(v)


def _check_auth(v: Mapping[str, Any]) -> None:
    if v["auth"] in TEAM_MODES and v["no_auth"]:
        raise ConfigError(f"--auth {v['auth']} and --no-auth exclude each other")
    if v["login_max_age"] <= 0 or v["login_idle"] <= 0:
        raise ConfigError("--login-max-age and --login-idle must be positive")
    if v["auth"] == "proxy" and not v["token"]:
        # Any local process can reach a loopback proxy address: the proxy proves itself.
        raise ConfigError(
            "--auth proxy needs a configured token (MIXVLLM_TERMINAL_TOKEN) that the proxy "
            "sends as `Authorization: Bearer`"
        )


def _audit_path(value: str | None, auth: str, env: Mapping[str, str]) -> Path | None:
    if value == "off" or (value is None and auth == "token"):
        return None
    if value:
        return Path(value)
    return state_dir(env) / "audit.jsonl"


def check_token(token: str) -> None:
    """A token must survive a cookie, a header and a URL (the message never quotes it)."""
    if len(token) < 8:
        raise ConfigError("--token must be at least 8 characters")
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ConfigError("--token must not contain spaces or control characters")


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse flags (falling back to MIXVLLM_TERMINAL_* variables) into a validated Config."""
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    try:
        v = resolve(OPTIONS, env, args)
    except OptionError as exc:
        raise ConfigError(str(exc)) from exc
    if v["auth"] == "proxy" and args.token is not None:
        # Every team user can read the server's command line in /proc.
        raise ConfigError(
            "with --auth proxy, set the token through MIXVLLM_TERMINAL_TOKEN: a --token flag "
            "shows in `ps` to every user"
        )
    try:
        shell = tuple(shlex.split(v["shell"] or _default_shell(env)))
        chat_cmd = tuple(shlex.split(v["chat_command"] or _default_chat()))
    except ValueError as exc:
        raise ConfigError(f"cannot parse command line: {exc}") from exc
    if not shell or not chat_cmd:
        raise ConfigError("--shell and --chat-command must not be empty")
    _check(v)
    origins = tuple(o.strip().rstrip("/") for o in v["allowed_origins"].split(",") if o.strip())
    public = v["public_url"].rstrip("/") + "/" if v["public_url"] else None
    try:
        oidc = oidc_settings(v, public) if v["auth"] == "oidc" else None
    except OidcConfigError as exc:
        raise ConfigError(str(exc)) from None
    return Config(
        host=v["host"],
        port=v["port"],
        autostart_chat=v["autostart_chat"],
        chat_command=chat_cmd,
        shell=shell,
        token=v["token"] or None,
        no_auth=v["no_auth"],
        max_sessions=v["max_sessions"],
        base_path=_normalize_base(v["base_path"]),
        public_url=public,
        certfile=v["certfile"] or None,
        keyfile=v["keyfile"] or None,
        allowed_origins=origins,
        idle_timeout=v["idle_timeout"],
        ping_interval=v["ping_interval"],
        scrollback_bytes=v["scrollback_bytes"],
        flow_window=v["flow_window"],
        cwd=env.get("HOME") or str(Path.home()),
        model_server_url=v["model_server_url"],
        model_api_key=v["model_api_key"],
        session_user=v["session_user"] or None,
        auth=v["auth"],
        proxy_user_header=v["proxy_user_header"],
        trusted_proxies=_networks(v["trusted_proxies"]),
        min_uid=v["min_uid"],
        max_user_sessions=v["max_user_sessions"],
        audit_log=_audit_path(v["audit_log"], v["auth"], env),
        login_max_age=v["login_max_age"],
        login_idle=v["login_idle"],
        max_logins=v["max_logins"],
        pam_service=v["pam_service"],
        allowed_users=_names(v["allowed_users"]),
        allowed_groups=_names(v["allowed_groups"]),
        oidc=oidc,
        **team_options.values(v),
        **model_proxy_options.values(v, env),
    )
