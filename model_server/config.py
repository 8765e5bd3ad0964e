"""Launcher configuration: a profile plus overrides from flags and env, built once.

Flags win over env vars, env vars win over the profile. Every env var is listed in ENV so
the README table and `--help` stay in step with the code.
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from model_server import profiles
from model_server.profiles import Profile, ProfileError

# flag dest -> env var
ENV = {
    "profile": "MIXVLLM_PROFILE",
    "model": "MODEL",
    "served_model_name": "SERVED_MODEL_NAME",
    "tensor_parallel_size": "TENSOR_PARALLEL_SIZE",
    "pipeline_parallel_size": "PIPELINE_PARALLEL_SIZE",
    "max_model_len": "MAX_MODEL_LEN",
    "gpu_memory_utilization": "GPU_MEMORY_UTILIZATION",
    "host": "MODEL_SERVER_HOST",
    "port": "MODEL_SERVER_PORT",
}
API_KEY_ENV = "VLLM_API_KEY"
STATE_DIR_ENV = "MIXVLLM_STATE_DIR"
VLLM_BIN_ENV = "MIXVLLM_VLLM_BIN"


class ConfigError(Exception):
    """A flag or env value is invalid."""


@dataclass(frozen=True)
class ServeConfig:
    profile: Profile
    api_key: str
    api_key_source: str
    dry_run: bool = False
    extra_args: tuple[str, ...] = ()


def state_dir(env: Mapping[str, str]) -> Path:
    """$MIXVLLM_STATE_DIR, else $XDG_STATE_HOME/mixvllm, else ~/.local/state/mixvllm.

    Plain XDG rules rather than platformdirs: the model image installs the launcher
    without dependencies on top of vLLM's.
    """
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV])
    xdg = env.get("XDG_STATE_HOME", "").strip()
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "mixvllm"


def api_key_file(env: Mapping[str, str]) -> Path:
    return state_dir(env) / "api-key"


def resolve_api_key(env: Mapping[str, str], *, create: bool = True) -> tuple[str, str]:
    """The model server's key: $VLLM_API_KEY, else a local key kept in the state dir.

    The local key is generated once (mode 0600) so `up`, `chat` in another shell
    (`export VLLM_API_KEY=$(mixvllm-serve key)`) and restarts all agree on it.
    """
    key = env.get(API_KEY_ENV, "").strip()
    if key:
        return key, API_KEY_ENV
    path = api_key_file(env)
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        stored = ""
    except OSError as exc:
        raise ConfigError(f"cannot read the local API key {path}: {exc.strerror}") from exc
    if stored:
        return stored, str(path)
    if not create:
        raise ConfigError(f"no API key: set {API_KEY_ENV} or start the server once")
    key = secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(key + "\n")
    except FileExistsError:
        return resolve_api_key(env, create=False)
    except OSError as exc:
        raise ConfigError(f"cannot write the local API key {path}: {exc.strerror}") from exc
    return key, str(path)


def add_profile_flags(parser: argparse.ArgumentParser) -> None:
    """The override flags shared by `serve` and `up`; each falls back to its env var."""
    add = parser.add_argument
    add("--profile", help=f"profile name or path to a .yaml file [${ENV['profile']}]")
    add("--model", help=f"model id, directory or .gguf file [${ENV['model']}]")
    add("--served-model-name", help=f"name clients ask for [${ENV['served_model_name']}]")
    add("--tensor-parallel-size", help=f"GPUs per pipeline stage [${ENV['tensor_parallel_size']}]")
    add("--pipeline-parallel-size", help=f"pipeline stages [${ENV['pipeline_parallel_size']}]")
    add("--max-model-len", help=f"context length in tokens [${ENV['max_model_len']}]")
    add(
        "--gpu-memory-utilization",
        help=f"fraction of GPU memory for vLLM [${ENV['gpu_memory_utilization']}]",
    )
    add("--host", help=f"address the engine binds [${ENV['host']}]")
    add("--port", help=f"port the engine listens on [${ENV['port']}]")


def _pick(args: argparse.Namespace, env: Mapping[str, str], dest: str) -> str | None:
    value = getattr(args, dest, None)
    if value is not None:
        return str(value)
    raw = env.get(ENV[dest], "").strip()
    return raw or None


def _source(args: argparse.Namespace, dest: str) -> str:
    flag = "--" + dest.replace("_", "-")
    return flag if getattr(args, dest, None) is not None else ENV[dest]


def _as_int(args: argparse.Namespace, dest: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"{_source(args, dest)}: must be an integer {low}..{high}, got {raw!r}")
    return value


def _served_name_for(model: str) -> str:
    if model.startswith((".", "/", "~")):
        name = Path(model).name
        return name.removesuffix(".gguf") or model
    return model


def apply_overrides(profile: Profile, args: argparse.Namespace, env: Mapping[str, str]) -> Profile:
    changes: dict[str, object] = {}
    model = _pick(args, env, "model")
    if model is not None:
        changes["model"] = model
        changes["served_model_name"] = _served_name_for(model)
    served = _pick(args, env, "served_model_name")
    if served is not None:
        changes["served_model_name"] = served
    for dest, low, high in (
        ("tensor_parallel_size", 1, 1024),
        ("pipeline_parallel_size", 1, 1024),
        ("max_model_len", 16, 10_000_000),
        ("port", 1, 65535),
    ):
        raw = _pick(args, env, dest)
        if raw is not None:
            changes[dest] = _as_int(args, dest, raw, low, high)
    raw = _pick(args, env, "gpu_memory_utilization")
    if raw is not None:
        try:
            fraction = float(raw)
        except ValueError:
            fraction = -1.0
        if not 0.0 < fraction <= 1.0:
            source = _source(args, "gpu_memory_utilization")
            raise ConfigError(f"{source}: must be a number in (0, 1], got {raw!r}")
        changes["gpu_memory_utilization"] = fraction
    host = _pick(args, env, "host")
    if host is not None:
        changes["host"] = host
    if not changes:
        return profile
    try:
        return profiles.with_overrides(profile, **changes)
    except ProfileError as exc:
        raise ConfigError(f"overrides do not fit profile {profile.name!r}: {exc}") from exc


def load_profile(args: argparse.Namespace, env: Mapping[str, str]) -> Profile:
    name = _pick(args, env, "profile") or profiles.DEFAULT_PROFILE
    return apply_overrides(profiles.load(name), args, env)


def build(args: argparse.Namespace, env: Mapping[str, str]) -> ServeConfig:
    """Raises ProfileError or ConfigError with one user-facing line."""
    profile = load_profile(args, env)
    dry_run = bool(getattr(args, "dry_run", False))
    try:
        # A dry run never writes the key file.
        key, source = resolve_api_key(env, create=not dry_run)
    except ConfigError:
        if not dry_run:
            raise
        key, source = "<generated on first start>", str(api_key_file(env))
    return ServeConfig(
        profile=profile,
        api_key=key,
        api_key_source=source,
        dry_run=dry_run,
        extra_args=tuple(getattr(args, "engine_args", None) or ()),
    )
