"""The chat CLI's configuration: flags, then env vars, then the config file, then defaults.

Every option is declared once in OPTIONS (see mixvllm_common.options); the parser, `--help`,
the resolution order and the table in docs/configuration.md are all built from it.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chat_cli import chats
from chat_cli.errors import ConfigError
from chat_cli.tools import mcp_config
from chat_cli.tools.mcp_config import TOOL_CHOICES, TOOL_NAME, ServerSpec
from mixvllm_common import defaults, names
from mixvllm_common.options import (
    Kind,
    Option,
    OptionError,
    add_to_parser,
    boolean,
    number,
    resolve,
    value,
)
from mixvllm_common.state import read_api_key
from mixvllm_common.urls import api_base, http_url, is_loopback

if TYPE_CHECKING:
    from chat_cli.roles import Role
    from chat_cli.servers import Server

APP = "mixvllm"
_NONE = "\N{EN DASH}"


def _whole(low: int | None = None) -> Kind:
    what = "a whole number" + (f" >= {low}" if low is not None else "")

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"needs {what}") from None
        if low is not None and number < low:
            raise ValueError(f"needs {what}")
        return number

    return parse


def _real(low: float, high: float = math.inf) -> Kind:
    what = f"a number from {low:g}" + (f" to {high:g}" if high < math.inf else " up")

    def parse(text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            number = math.nan  # fails the range check below
        if not low <= number <= high:
            raise ValueError(f"needs {what}")
        return number

    return parse


def _tool_choice(text: str) -> str:
    """auto, required, none, or what can be a tool's name (the tools are known only once
    their servers run: Toolbox.check_choice tells then)."""
    if text in TOOL_CHOICES or TOOL_NAME.fullmatch(text):
        return text
    raise ValueError("needs auto, required, none or a tool's name")


def _resume(text: str) -> bool | str:
    """--resume alone (or a boolean in the env or file): the last chat; a word: that chat."""
    try:
        return boolean(text)
    except ValueError:
        if not chats.is_name(text.removesuffix(".json")):
            raise ValueError("needs a conversation name (/chats lists them)") from None
        return text


def _flag(dest: str, flag: str, help_: str) -> Option:
    env = "CHAT_" + dest.upper()
    return Option(dest, (flag,), (env,), boolean, False, help_)


OPTIONS: tuple[Option, ...] = (
    Option(
        "url", ("--url",), (defaults.MODEL_SERVER_URL_ENV,), http_url,
        defaults.DEFAULT_MODEL_SERVER_URL, "model server URL, with or without `/v1`", "URL",
    ),
    Option(
        "fallback_url", ("--fallback-url",), ("CHAT_FALLBACK_URL",), http_url, None,
        "server used when the primary one is unreachable", "URL",
    ),
    Option(
        "api_key", ("--api-key",), defaults.CLIENT_API_KEY_ENVS, str, None,
        "API key sent as a bearer token", "KEY",
        shown_default="the local key of `mixvllm-serve` for a server on this machine",
    ),
    Option(
        "model", ("--model", "-m"), ("CHAT_MODEL",), str, None, "model name", "NAME",
        shown_default="first model `/v1/models` lists",
    ),
    Option(
        "server", ("--server",), ("CHAT_SERVER",), str, None,
        "talk to the server `[servers.NAME]` of the config file (`/server` lists them)", "NAME",
        shown_default="the one of `--url`, named `default`",
    ),
    Option(
        "role", ("--role", "-r"), ("CHAT_ROLE",), str, None,
        "a role: its system prompt, question template, model and settings; flags beat it "
        "(`/roles` lists them, `[roles.NAME]` in the config file adds one)", "NAME",
    ),
    Option("system", ("--system", "-s"), ("CHAT_SYSTEM",), str, None, "system prompt", "TEXT"),
    Option(
        "temperature", ("--temperature", "-t"), ("CHAT_TEMPERATURE",), _real(0.0), None,
        "sampling temperature", "T", shown_default="server's",
    ),
    Option(
        "top_p", ("--top-p",), ("CHAT_TOP_P",), _real(0.0, 1.0), None,
        "nucleus sampling top_p", "P",
        shown_default="server's",
    ),
    Option(
        "max_tokens", ("--max-tokens",), ("CHAT_MAX_TOKENS",), _whole(1), None,
        "answer length limit in tokens", "N", shown_default="server's",
    ),
    Option("seed", ("--seed",), ("CHAT_SEED",), _whole(), None, "sampling seed", "N"),
    Option(
        "context_length", ("--context-length",), (names.CHAT_CONTEXT_LENGTH_ENV,), _whole(1), None,
        "the model's context in tokens, for a server that does not report it", "N",
        shown_default="the server's (vLLM, llama.cpp's llama-server)",
    ),
    _flag("completions", "--completions", "raw `/v1/completions` (no chat template)"),
    _flag("no_stream", "--no-stream", "wait for the whole answer instead of streaming it"),
    _flag("plain", "--plain", "plain text, no markdown rendering"),
    _flag("json", "--json", "one-shot: print the reply, usage and timings as JSON"),
    _flag(
        "hide_reasoning", "--hide-reasoning",
        'show only "thinking… (N words)", not the reasoning text',
    ),
    Option(
        "wait", ("--wait",), ("CHAT_WAIT",), _real(0.0), 0.0,
        "wait up to SECONDS for a loading server, showing progress", "SECONDS",
    ),
    Option(
        "timeout", ("--timeout",), ("CHAT_TIMEOUT",), number(0.0), 120.0,
        "stall timeout: give up when a streamed answer sends nothing for SECONDS", "SECONDS",
    ),
    Option(
        "deadline", ("--deadline",), ("CHAT_DEADLINE",), number(0.0), 600.0,
        "give up on an answer not started after SECONDS (queue and prompt); with "
        "`--no-stream`, on one not finished", "SECONDS",
    ),
    Option(
        "resume", ("--resume",), ("CHAT_RESUME",), _resume, False,
        "continue the last saved chat, or the one named NAME; one-shots are saved only with it",
        "NAME", shown_default="off", const=True,
    ),
    Option(
        "mcp", ("--mcp",), (), mcp_config.parse_flag, (),
        "add an MCP server for this chat: `NAME=COMMAND [ARGS...]` (stdio) or `NAME=URL` "
        "(streamable HTTP); repeatable, next to `[mcp.servers.NAME]` in the config file",
        "NAME=COMMAND", shown_default=_NONE, repeat=True,
    ),
    Option(
        "yes", ("--yes", "-y"), ("CHAT_YES",), boolean, False,
        "run the model's tool calls without asking (trusted tools only)",
    ),
    Option(
        "tool_choice", ("--tool-choice",), ("CHAT_TOOL_CHOICE",), _tool_choice, "auto",
        "`auto`, `required`, `none` or a tool's name: what the model must do with tools "
        "in its first answer to each question", "CHOICE",
    ),
    Option(
        "max_tool_rounds", ("--max-tool-rounds",), ("CHAT_MAX_TOOL_ROUNDS",), _whole(1), 8,
        "stop when the model still calls tools after N rounds of calls", "N",
    ),
    Option(
        "tool_timeout", ("--tool-timeout",), ("CHAT_TOOL_TIMEOUT",), number(0.0), 60.0,
        "give up on a tool call after SECONDS", "SECONDS",
    ),
    Option(
        "history", ("--history",), ("CHAT_HISTORY",), boolean, True,
        "log every exchange to the history database (`chat logs`, `/search`)",
        off_flag="--no-history",
    ),
    Option(
        "attach", ("--attach", "-a"), (), str, (),
        "attach a text file or an image (png, jpg, webp, gif) to the question, or to the "
        "REPL's first; globs too; repeatable (`/file` in the REPL)", "PATH",
        shown_default=_NONE, repeat=True,
    ),
    _flag("debug", "--debug", "show tracebacks on errors"),
)  # fmt: skip
# Not a key of the file it names.
CONFIG_FILE = Option(
    "config_file", ("--config",), ("CHAT_CONFIG",), str, None, "config file", "FILE",
    shown_default="`$XDG_CONFIG_HOME/mixvllm/chat.toml`",
)  # fmt: skip
DOCUMENTED = (*OPTIONS, CONFIG_FILE)
ROLE_SETTINGS = ("system", "model", "temperature", "top_p", "max_tokens", "seed")
KINDS = {o.dest: o.kind for o in OPTIONS if o.dest in ROLE_SETTINGS}


@dataclass(frozen=True)
class Paths:
    config_file: Path
    history_file: Path
    conversations_dir: Path
    history_db: Path


@dataclass(frozen=True)
class Config:
    url: str
    fallback_url: str | None
    api_key: str | None
    model: str | None
    system: str | None
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    seed: int | None
    context_length: int | None
    completions: bool
    stream: bool
    plain: bool
    json: bool
    hide_reasoning: bool
    wait: float
    timeout: float
    deadline: float
    resume: bool | str  # True: the last conversation; a string: the one of that name
    mcp: tuple[ServerSpec, ...]  # the config file's servers, then --mcp's
    yes: bool
    tool_choice: str
    max_tool_rounds: int
    tool_timeout: float
    history: bool
    attach: tuple[str, ...]  # paths and globs, read when chat starts
    debug: bool
    prompt: str | None
    paths: Paths
    # The role's settings are in the fields above (flags beat them); `base`, the same
    # settings without it, for /role.
    role: Role | None = None
    roles: Mapping[str, Role] = field(default_factory=dict)  # the built-ins and the file's
    base: Mapping[str, Any] = field(default_factory=dict)
    tools: bool = True  # the role's tools on/off; tools also need MCP servers
    server: str = "default"
    servers: Mapping[str, Server] = field(default_factory=dict)  # the file's


def default_paths(env: Mapping[str, str], config_file: str | None = None) -> Paths:
    # XDG rules read from `env` (not os.environ) so tests can inject them.
    home = Path(env.get("HOME", str(Path.home())))

    def xdg(var: str, fallback: str) -> Path:
        value = env.get(var)
        return Path(value) if value else home / fallback

    return Paths(
        config_file=Path(config_file or xdg("XDG_CONFIG_HOME", ".config") / APP / "chat.toml"),
        history_file=xdg("XDG_STATE_HOME", ".local/state") / APP / "chat_history",
        conversations_dir=xdg("XDG_DATA_HOME", ".local/share") / APP / "conversations",
        history_db=xdg("XDG_DATA_HOME", ".local/share") / APP / "history.db",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat",
        description="Chat with an OpenAI-compatible model server (vLLM, llama.cpp).",
        epilog=(
            "Precedence: flag > env var > config file ($XDG_CONFIG_HOME/mixvllm/chat.toml, or "
            "CHAT_CONFIG; keys are the option names with underscores, e.g. max_tokens = 512) > "
            "default. In the REPL type /help for commands. chat logs lists and searches "
            "the history of exchanges (chat logs --help)."
        ),
    )
    parser.add_argument("prompt", nargs="*", help="one-shot question; piped stdin is appended")
    add_to_parser(parser, DOCUMENTED)
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    return parser


def _read_config_file(path: Path, *, named: bool) -> dict[str, Any]:
    """The config file's keys; a file named by --config or $CHAT_CONFIG must exist."""
    if not path.is_file():
        if named:
            raise ConfigError(
                f"config file {path} does not exist (named by --config or CHAT_CONFIG)"
            )
        return {}
    import tomllib  # noqa: PLC0415 (only when a config file exists)

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"cannot read config file {path}: not UTF-8 text ({err.reason} at byte {err.start})"
        ) from err
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    # A file's `attach` would go with every question: a flag only.
    known = ({o.dest for o in OPTIONS} | {"roles", "servers"}) - {"attach"}
    unknown = sorted(set(data) - known)
    if "mcp" in data:
        try:
            data["mcp"] = tuple(mcp_config.parse_table(data["mcp"], f"config file {path}"))
        except ValueError as err:
            raise ConfigError(str(err)) from err
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {', '.join(unknown)}")
    return data


def _servers(specs: Sequence[ServerSpec]) -> tuple[ServerSpec, ...]:
    """A --mcp server replaces a file's server of the same name."""
    by_name = {spec.name: spec for spec in specs}
    return tuple(by_name.values())


def _roles(
    values: dict[str, Any],
    args: argparse.Namespace,
    table: object,
    source: str,
    origin: Callable[[str], str],
) -> dict[str, Any]:
    """The role and the roles; the role's settings go into `values` where no flag set them."""
    base = {k: values[k] for k in ROLE_SETTINGS}
    if values["role"] is None and table is None:
        return {"role": None, "roles": {}, "base": base, "tools": True}
    from chat_cli import roles  # noqa: PLC0415 (start-up: only with roles)

    try:
        configured = {} if table is None else roles.parse_table(table, source, KINDS)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    known = roles.merged(configured)
    role = None if values["role"] is None else roles.find(known, values["role"], origin("role"))
    given = frozenset(k for k in ROLE_SETTINGS if getattr(args, k) is not None)
    values.update(roles.settings(role, base, given))
    tools = role is None or role.tools is not False
    return {"role": role, "roles": known, "base": base, "tools": tools}


def _model_servers(
    server: str | None, table: object, source: str, origin: Callable[[str], str]
) -> dict[str, Any]:
    if server in (None, "default") and table is None:
        return {"server": "default", "servers": {}}
    from chat_cli import servers  # noqa: PLC0415 (start-up: only with servers)

    try:
        configured = {} if table is None else servers.parse_table(table, source)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    name = server or "default"
    if name != "default" and name not in configured:
        raise servers.unknown(name, ["default", *configured], origin("server"))
    return {"server": name, "servers": configured}


def load_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    args = build_parser().parse_args(list(argv))
    try:
        named = value(CONFIG_FILE, env, args)
        paths = default_paths(env, named)
        file_values = _read_config_file(paths.config_file, named=named is not None)
        servers = file_values.pop("mcp", ())
        tables = {k: file_values.pop(k) for k in ("roles", "servers") if k in file_values}
        values = resolve(OPTIONS, env, args, file_values, str(paths.config_file))
    except OptionError as err:
        raise ConfigError(str(err)) from err
    source = f"config file {paths.config_file}"

    def origin(dest: str) -> str:
        """Where an option's value came from, as a one-line error names it."""
        option = next(o for o in OPTIONS if o.dest == dest)
        if getattr(args, dest, None) is not None:
            return option.flags[0]
        env_name = next((e for e in option.envs if env.get(e, "").strip()), None)
        return f"${env_name}" if env_name else f"{dest} in {source}"

    values.update(_roles(values, args, tables.get("roles"), source, origin))
    values.update(_model_servers(values.pop("server"), tables.get("servers"), source, origin))
    values["stream"] = not values.pop("no_stream")
    values["mcp"] = _servers((*servers, *values["mcp"]))
    values["attach"] = tuple(values["attach"])

    values["url"] = api_base(values["url"])
    if values["api_key"] is None and is_loopback(values["url"]):
        # `mixvllm-serve up` keeps a generated key here: a new shell finds it without export.
        values["api_key"] = read_api_key(env)
    if values["fallback_url"]:
        values["fallback_url"] = api_base(values["fallback_url"])
    prompt = " ".join(args.prompt).strip() or None
    resume = values["resume"]
    if isinstance(resume, str) and args.resume == resume and not chats.could_be_name(resume):
        # `chat --resume "and then?"`: a question for the last chat, as no name has spaces.
        prompt = f"{resume} {prompt}" if prompt else resume
        values["resume"] = True
    return Config(**values, prompt=prompt, paths=paths)
