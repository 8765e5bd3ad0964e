"""MCP servers as configured: `[mcp.servers.NAME]` tables in chat.toml, `--mcp NAME=COMMAND`;
and the forms a `tool_choice` may take (config.py checks it before any server runs).

Only text handling here: the SDK is imported when a server starts (chat_cli.mcp_client).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
TOOL_CHOICES = ("auto", "required", "none")
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # a tool's name as the model sees it (the API's)
_KEYS = {"command", "args", "env", "url", "headers"}


@dataclass(frozen=True)
class ServerSpec:
    """One server: a command to start (stdio) or a URL (streamable HTTP)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        import shlex  # noqa: PLC0415 (start-up: only with servers)

        return self.url or shlex.join([self.command or "", *self.args])


def parse_flag(text: str) -> ServerSpec:
    """`NAME=COMMAND ARGS...` (a shell-quoted command line) or `NAME=http(s)://URL`."""
    name, equals, rest = text.partition("=")
    name = name.strip()
    if not equals or not _NAME.match(name) or not rest.strip():
        raise ValueError("needs NAME=COMMAND [ARGS...] or NAME=URL")
    if rest.strip().startswith(("http://", "https://")):
        return ServerSpec(name, url=rest.strip())
    import shlex  # noqa: PLC0415 (start-up: only with servers)

    try:
        words = shlex.split(rest)
    except ValueError as err:
        raise ValueError(f"cannot split the command line ({err})") from None
    return ServerSpec(name, command=words[0], args=tuple(words[1:]))


def parse_table(table: object, where: str) -> list[ServerSpec]:
    """The `[mcp]` table of a config file: `servers.NAME = {command, args, env}` or
    `{url, headers}`. Raises ValueError naming the key at fault."""
    if not isinstance(table, dict) or set(table) - {"servers"}:
        raise ValueError(f"{where}: [mcp] holds only [mcp.servers.NAME] tables")
    servers = table.get("servers", {})
    if not isinstance(servers, dict):
        raise ValueError(f"{where}: mcp.servers must be a table of servers")
    return [_server(name, spec, f"{where}: mcp.servers.{name}") for name, spec in servers.items()]


def _server(name: str, spec: object, where: str) -> ServerSpec:
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a table")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")
    if ("command" in spec) == ("url" in spec):
        raise ValueError(f"{where} needs either command (stdio) or url (streamable HTTP)")
    if not _NAME.match(name):
        raise ValueError(f"{where}: a server name is letters, digits, _ . -")
    if "url" in spec:
        return ServerSpec(
            name, url=_text(spec["url"], where), headers=_pairs(spec.get("headers"), where)
        )
    args = spec.get("args", [])
    if not isinstance(args, list):
        raise ValueError(f"{where}: args must be a list of strings")
    return ServerSpec(
        name,
        command=_text(spec["command"], where),
        args=tuple(_text(a, where) for a in args),
        env=_pairs(spec.get("env"), where),
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _pairs(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError(f"{where}: env and headers are tables of strings")
    return tuple((str(k), _text(v, where)) for k, v in value.items())
