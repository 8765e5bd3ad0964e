"""Model servers by name: `[servers.NAME]` in chat.toml, next to `default` (MODEL_SERVER_URL
or --url).

A server's key comes from `key_env` (an environment variable), `key_command` (a program that
prints it: run without a shell, with a timeout and a bound on its output, its stderr never
shown as it could hold the key) or, not recommended, `key`. It is read when the server is
first used, once per process, and never written to a log, the history or an export.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from chat_cli.errors import ChatError, ConfigError
from mixvllm_common.state import read_api_key
from mixvllm_common.urls import api_base, http_url, is_loopback

DEFAULT = "default"
KEY_COMMAND_TIMEOUT_S = 10.0
KEY_OUTPUT_MAX = 16 * 1024
_KEYS = ("url", "key", "key_env", "key_command")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # what a bearer token can be


class KeyUnavailable(ChatError):
    """A server's key cannot be had; the message is one line and never holds the key."""


@dataclass(frozen=True)
class Server:
    name: str
    url: str  # ends in /v1
    key: str | None = field(default=None, repr=False)
    key_env: str | None = None
    key_command: tuple[str, ...] = ()


def parse_table(table: object, source: str) -> dict[str, Server]:
    """`[servers.NAME]` tables into servers. Raises ValueError with one line."""
    if not isinstance(table, dict):
        raise ValueError(f"{source}: servers must be a table of [servers.NAME] tables")
    servers: dict[str, Server] = {}
    for name, body in table.items():
        where = f"{source}: [servers.{name}]"
        if name == DEFAULT:
            raise ValueError(
                f"{where}: `default` is the server of --url / MODEL_SERVER_URL; pick another name"
            )
        if not isinstance(body, dict):
            raise ValueError(f"{where} must be a table")
        unknown = sorted(set(body) - set(_KEYS))
        if unknown:
            listed = ", ".join(unknown)
            raise ValueError(f"{where}: unknown keys {listed}; known: {', '.join(_KEYS)}")
        if any(not isinstance(v, str) for v in body.values()):
            raise ValueError(f"{where}: {', '.join(_KEYS)} are strings")
        if "url" not in body:
            raise ValueError(f"{where} needs a url")
        if len({"key", "key_env", "key_command"} & set(body)) > 1:
            raise ValueError(f"{where}: give one of key, key_env, key_command")
        try:
            url = api_base(http_url(body["url"]))
            command = tuple(shlex.split(body.get("key_command", "")))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if "key_command" in body and not command:
            raise ValueError(f"{where}: key_command is empty")
        servers[name] = Server(name, url, body.get("key"), body.get("key_env"), command)
    return servers


def find(servers: Mapping[str, Server], name: str) -> Server:
    """The server `name`; ConfigError with one line listing the known ones."""
    server = servers.get(name)
    if server is None:
        raise unknown(name, list(servers))
    return server


def unknown(name: str, names: list[str], where: str = "") -> ConfigError:
    named = f" ({where})" if where else ""
    return ConfigError(f"unknown server {name!r}{named}; known servers: {', '.join(names)}")


def read_key(server: Server, env: Mapping[str, str]) -> str | None:
    """The server's key, or None when it has none configured. Raises KeyUnavailable."""
    key = _read_key(server, env)
    if key is not None and not _HEADER_SAFE.fullmatch(key):
        # http.client would refuse it in an error that quotes it.
        raise KeyUnavailable(
            f"server {server.name!r}: its key holds a space, a control or a non-ASCII "
            "character (it is not shown)"
        )
    return key


def _read_key(server: Server, env: Mapping[str, str]) -> str | None:
    if server.key_env is not None:
        key = env.get(server.key_env, "").strip()
        if not key:
            raise KeyUnavailable(
                f"server {server.name!r}: its key variable ${server.key_env} is not set"
            )
        return key
    if server.key_command:
        return run_key_command(server.name, server.key_command)
    if server.key is None and is_loopback(server.url):
        return read_api_key(env)  # as for `default`: the key `mixvllm-serve up` keeps
    return server.key


def run_key_command(
    name: str,
    argv: tuple[str, ...],
    timeout: float = KEY_COMMAND_TIMEOUT_S,
    limit: int = KEY_OUTPUT_MAX,
) -> str:
    """The first line the command prints. Its whole process group is killed at the
    timeout; its stderr is thrown away (it could hold the key)."""
    what = f"server {name!r}: key command {os.path.basename(argv[0])!r}"
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    except OSError as err:
        raise KeyUnavailable(f"{what} cannot start ({err.strerror})") from None
    assert proc.stdout is not None
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise KeyUnavailable(f"{what} gave no key within {timeout:g} s; it was stopped")
                if not sel.select(left):
                    continue
                data = os.read(proc.stdout.fileno(), 4096)
                if not data:
                    break
                output += data
                if len(output) > limit:
                    raise KeyUnavailable(f"{what} printed over {limit // 1024} KiB; it was stopped")
        status = proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise KeyUnavailable(f"{what} gave no key within {timeout:g} s; it was stopped") from None
    finally:
        _stop(proc)
    if status != 0:
        raise KeyUnavailable(f"{what} failed (exit status {status}; its output is not shown)")
    key = output.decode("utf-8", "replace").strip().split("\n", 1)[0].strip()
    if not key:
        raise KeyUnavailable(f"{what} printed no key")
    return key


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """The command's whole group: a child it left behind may hold the pipe open."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
