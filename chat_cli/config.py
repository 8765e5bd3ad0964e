"""The chat CLI's configuration: flags, then env vars, then the config file, then defaults.

Every option is declared once in OPTIONS; the parser, `--help` (which names each env var)
and the resolution order are all built from that table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chat_cli.errors import ConfigError

APP = "mixvllm"
DEFAULT_URL = "http://localhost:8000"


@dataclass(frozen=True)
class Option:
    dest: str
    flags: tuple[str, ...]
    envs: tuple[str, ...]
    kind: Callable[[str], Any]  # str, int, float or _bool
    default: Any
    help: str
    metavar: str | None = None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


OPTIONS: tuple[Option, ...] = (
    Option(
        "url",
        ("--url",),
        ("MODEL_SERVER_URL",),
        str,
        DEFAULT_URL,
        "model server URL, with or without /v1",
        "URL",
    ),
    Option(
        "fallback_url",
        ("--fallback-url",),
        ("CHAT_FALLBACK_URL",),
        str,
        None,
        "server used when the primary one is unreachable",
        "URL",
    ),
    Option(
        "api_key",
        ("--api-key",),
        ("VLLM_API_KEY", "OPENAI_API_KEY"),
        str,
        None,
        "API key sent as a bearer token",
        "KEY",
    ),
    Option(
        "model",
        ("--model", "-m"),
        ("CHAT_MODEL",),
        str,
        None,
        "model name (default: the first one /v1/models lists)",
        "NAME",
    ),
    Option("system", ("--system", "-s"), ("CHAT_SYSTEM",), str, None, "system prompt", "TEXT"),
    Option(
        "temperature",
        ("--temperature", "-t"),
        ("CHAT_TEMPERATURE",),
        float,
        None,
        "sampling temperature (default: the server's)",
        "T",
    ),
    Option(
        "top_p",
        ("--top-p",),
        ("CHAT_TOP_P",),
        float,
        None,
        "nucleus sampling top_p (default: the server's)",
        "P",
    ),
    Option(
        "max_tokens",
        ("--max-tokens",),
        ("CHAT_MAX_TOKENS",),
        int,
        None,
        "answer length limit in tokens (default: the server's)",
        "N",
    ),
    Option("seed", ("--seed",), ("CHAT_SEED",), int, None, "sampling seed", "N"),
    Option(
        "completions",
        ("--completions",),
        ("CHAT_COMPLETIONS",),
        _bool,
        False,
        "use the raw /v1/completions endpoint (no chat template)",
    ),
    Option(
        "no_stream",
        ("--no-stream",),
        ("CHAT_NO_STREAM",),
        _bool,
        False,
        "wait for the whole answer instead of streaming it",
    ),
    Option(
        "plain",
        ("--plain",),
        ("CHAT_PLAIN",),
        _bool,
        False,
        "print plain text, no markdown rendering",
    ),
    Option(
        "json",
        ("--json",),
        ("CHAT_JSON",),
        _bool,
        False,
        "one-shot: print the reply, usage and timings as JSON",
    ),
    Option(
        "hide_reasoning",
        ("--hide-reasoning",),
        ("CHAT_HIDE_REASONING",),
        _bool,
        False,
        "do not show reasoning_content while it streams",
    ),
    Option(
        "wait",
        ("--wait",),
        ("CHAT_WAIT",),
        float,
        0.0,
        "wait up to SECONDS for a loading model server",
        "SECONDS",
    ),
    Option(
        "timeout",
        ("--timeout",),
        ("CHAT_TIMEOUT",),
        float,
        120.0,
        "give up when the server sends nothing for SECONDS",
        "SECONDS",
    ),
    Option(
        "resume",
        ("--resume",),
        ("CHAT_RESUME",),
        _bool,
        False,
        "continue the last autosaved conversation",
    ),
    Option("debug", ("--debug",), ("CHAT_DEBUG",), _bool, False, "show tracebacks on errors"),
)


@dataclass(frozen=True)
class Paths:
    config_file: Path
    history_file: Path
    conversations_dir: Path


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
    completions: bool
    stream: bool
    plain: bool
    json: bool
    hide_reasoning: bool
    wait: float
    timeout: float
    resume: bool
    debug: bool
    prompt: str | None
    paths: Paths

    def with_changes(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def normalize_url(url: str) -> str:
    """`http://host:8000`, `.../v1` and `.../v1/` all become `http://host:8000/v1`."""
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        base = "http://" + base
    return base if base.endswith("/v1") else base + "/v1"


def default_paths(env: Mapping[str, str]) -> Paths:
    # platformdirs honours XDG_* from os.environ; read them from `env` so tests can inject.
    home = Path(env.get("HOME", str(Path.home())))

    def xdg(var: str, fallback: str) -> Path:
        value = env.get(var)
        return Path(value) if value else home / fallback

    config_dir = xdg("XDG_CONFIG_HOME", ".config") / APP
    state_dir = xdg("XDG_STATE_HOME", ".local/state") / APP
    data_dir = xdg("XDG_DATA_HOME", ".local/share") / APP
    config_file = Path(env["CHAT_CONFIG"]) if env.get("CHAT_CONFIG") else config_dir / "chat.toml"
    return Paths(
        config_file=config_file,
        history_file=state_dir / "chat_history",
        conversations_dir=data_dir / "conversations",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat",
        description="Chat with an OpenAI-compatible model server (vLLM, llama.cpp).",
        epilog=(
            "Precedence: flag > env var > config file ($XDG_CONFIG_HOME/mixvllm/chat.toml, or "
            "CHAT_CONFIG; keys are the option names with underscores, e.g. max_tokens = 512) > "
            "default. In the REPL type /help for commands."
        ),
    )
    parser.add_argument("prompt", nargs="*", help="one-shot question; piped stdin is appended")
    for opt in OPTIONS:
        env_text = " or ".join(f"${e}" for e in opt.envs)
        default = "" if opt.default in (None, False) else f", default {opt.default}"
        help_text = f"{opt.help} [env {env_text}{default}]".replace("%", "%%")
        if opt.kind is _bool:
            parser.add_argument(
                *opt.flags,
                dest=opt.dest,
                action="store_const",
                const=True,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                *opt.flags, dest=opt.dest, default=None, metavar=opt.metavar, help=help_text
            )
    parser.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        default=None,
        help="config file path [env $CHAT_CONFIG]",
    )
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    return parser


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import tomllib  # noqa: PLC0415 (only when a config file exists)

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    known = {o.dest for o in OPTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {', '.join(unknown)}")
    return data


def _convert(opt: Option, raw: Any, source: str) -> Any:
    if raw is None:
        return None
    try:
        if opt.kind is _bool:
            return raw if isinstance(raw, bool) else _bool(str(raw))
        return opt.kind(raw if not isinstance(raw, str) else raw.strip())
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid value {raw!r} for {opt.flags[0]} (from {source})") from err


def load_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    args = build_parser().parse_args(list(argv))
    paths = default_paths(env)
    if args.config_file:
        paths = dataclasses.replace(paths, config_file=Path(args.config_file))
    file_values = _read_config_file(paths.config_file)

    values: dict[str, Any] = {}
    for opt in OPTIONS:
        value = _convert(opt, getattr(args, opt.dest), opt.flags[0])
        if value is None:
            for name in opt.envs:
                if env.get(name):
                    value = _convert(opt, env[name], f"${name}")
                    break
        if value is None and opt.dest in file_values:
            value = _convert(opt, file_values[opt.dest], str(paths.config_file))
        if value is None:
            value = opt.default
        values[opt.dest] = value
    values["stream"] = not values.pop("no_stream")

    if values["wait"] < 0 or values["timeout"] <= 0:
        raise ConfigError("--wait must be >= 0 and --timeout > 0")
    values["url"] = normalize_url(values["url"])
    if values["fallback_url"]:
        values["fallback_url"] = normalize_url(values["fallback_url"])
    prompt = " ".join(args.prompt).strip() or None
    return Config(**values, prompt=prompt, paths=paths)
