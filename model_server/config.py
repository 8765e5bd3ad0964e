"""Launcher configuration: a profile plus overrides from flags and env, built once.

Flags win over env vars, env vars win over the profile. Every flag and env var is an
`Option` in SERVE_OPTIONS, so `--help` and docs/configuration.md stay in step with the code.
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mixvllm_common import defaults
from mixvllm_common.options import (
    Option,
    OptionError,
    add_to_parser,
    boolean,
    integer,
    number,
    resolve,
    value,
)
from mixvllm_common.state import STATE_DIR_ENV, api_key_file
from model_server import profiles
from model_server.errors import LauncherError
from model_server.profiles import Profile, ProfileError

API_KEY_ENV = defaults.VLLM_API_KEY_ENV


def data_parallel(text: str) -> int | str:
    """`auto` or an integer 1..1024."""
    if text.strip().lower() == "auto":
        return "auto"
    size: int = integer(1, 1024, "auto or an integer")(text)
    return size


VLLM_BIN_ENV = "MIXVLLM_VLLM_BIN"

PROFILE = Option(
    "profile", ("--profile",), ("MIXVLLM_PROFILE",), str, profiles.DEFAULT_PROFILE,
    "profile name or path to a `.yaml`", "NAME",
)  # fmt: skip
_PROFILES = "profile's"
PORT = Option(
    "port", ("--port",), ("MODEL_SERVER_PORT",), integer(1, 65535), None, "port", "PORT",
    shown_default="profile's (`8000`)",
)  # fmt: skip
# Overrides of the profile's fields; None (unset) keeps the profile's value.
OVERRIDES: tuple[Option, ...] = (
    Option("model", ("--model",), ("MODEL",), str, None,
           "model id, directory or `.gguf`", "MODEL", _PROFILES),
    Option("served_model_name", ("--served-model-name",), ("SERVED_MODEL_NAME",), str, None,
           "the name clients ask for", "NAME", _PROFILES),
    Option("tensor_parallel_size", ("--tensor-parallel-size",), ("TENSOR_PARALLEL_SIZE",),
           integer(1, 1024), None, "GPUs per pipeline stage (vLLM)", "N", _PROFILES),
    Option("pipeline_parallel_size", ("--pipeline-parallel-size",),
           ("PIPELINE_PARALLEL_SIZE",), integer(1, 1024), None, "pipeline stages (vLLM)", "N",
           _PROFILES),
    Option("data_parallel_size", ("--data-parallel-size",), ("DATA_PARALLEL_SIZE",),
           data_parallel, None,
           "vLLM engines of TP x PP GPUs each behind one API server; `auto`: as many as the "
           "visible GPUs hold", "N|auto", _PROFILES),
    Option("nnodes", ("--nnodes",), ("NNODES",), integer(1, 1024), None,
           "nodes the model spans (vLLM multi-node)", "N", _PROFILES),
    Option("max_model_len", ("--max-model-len",), ("MAX_MODEL_LEN",),
           integer(16, 10_000_000), None, "context length (per slot for llama.cpp)", "N",
           _PROFILES),
    Option("gpu_memory_utilization", ("--gpu-memory-utilization",),
           ("GPU_MEMORY_UTILIZATION",), number(0.0, 1.0), None,
           "share of GPU memory vLLM may use, (0, 1]", "FRACTION", _PROFILES),
    Option("host", ("--host",), ("MODEL_SERVER_HOST",), str, None, "bind address", "HOST",
           "profile's (`127.0.0.1`)"),
    PORT,
)  # fmt: skip
# Where this node sits in a multi-node deployment; the same profile runs on every node.
NODE_OPTIONS: tuple[Option, ...] = (
    Option("node_rank", ("--node-rank",), ("NODE_RANK",), integer(0, 1023), 0,
           "this node's index; node 0 serves the API, the others run headless", "N"),
    Option("master_addr", ("--master-addr",), ("MASTER_ADDR",), str, None,
           "node 0's cluster address (multi-node)", "ADDR"),
)  # fmt: skip
SERVE_OPTIONS: tuple[Option, ...] = (
    PROFILE,
    *OVERRIDES,
    *NODE_OPTIONS,
    Option("dry_run", ("--dry-run",), (), boolean, False,
           "print the engine command (stdout) and its environment (stderr), then exit"),
    Option("list", ("--list",), (), boolean, False, "list the profiles and exit"),
    # Read where they are used; listed here for docs/configuration.md.
    Option("api_key", (), (API_KEY_ENV,), str, None, "API key required on `/v1`",
           shown_default="local key file"),
    Option("state_dir", (), (STATE_DIR_ENV,), str, None, "local key and `up`'s logs",
           shown_default="`$XDG_STATE_HOME/mixvllm`"),
    Option("vllm_bin", (), (VLLM_BIN_ENV,), str, None, "which vLLM to run",
           shown_default="`.venv-vllm/bin/vllm`, then `vllm` on PATH"),
)  # fmt: skip


class ConfigError(LauncherError):
    """A flag or env value is invalid."""

    exit_code = 2


@dataclass(frozen=True)
class ServeConfig:
    profile: Profile
    api_key: str
    api_key_source: str
    dry_run: bool = False
    extra_args: tuple[str, ...] = ()
    node_rank: int = 0
    master_addr: str | None = None

    @property
    def headless(self) -> bool:
        """A worker node: it runs its share of the model and no API server."""
        return self.node_rank > 0


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


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    add_to_parser(parser, SERVE_OPTIONS)


def _served_name_for(model: str) -> str:
    if model.startswith((".", "/", "~")):
        name = Path(model).name
        return name.removesuffix(".gguf") or model
    return model


def apply_overrides(profile: Profile, args: argparse.Namespace, env: Mapping[str, str]) -> Profile:
    try:
        values = resolve(OVERRIDES, env, args)
    except OptionError as exc:
        raise ConfigError(str(exc)) from exc
    changes = {dest: value for dest, value in values.items() if value is not None}
    if "model" in changes:
        changes.setdefault("served_model_name", _served_name_for(changes["model"]))
    if not changes:
        return profile
    try:
        return profiles.with_overrides(profile, **changes)
    except ProfileError as exc:
        raise ConfigError(f"overrides do not fit profile {profile.name!r}: {exc}") from exc


def load_profile(args: argparse.Namespace, env: Mapping[str, str]) -> Profile:
    try:
        name = value(PROFILE, env, args)
    except OptionError as exc:
        raise ConfigError(str(exc)) from exc
    return apply_overrides(profiles.load(name), args, env)


def node_settings(
    profile: Profile, args: argparse.Namespace, env: Mapping[str, str], *, dry_run: bool
) -> tuple[int, str | None]:
    """This node's rank and node 0's address, checked against the profile's node count."""
    try:
        values = resolve(NODE_OPTIONS, env, args)
    except OptionError as exc:
        raise ConfigError(str(exc)) from exc
    rank, master = values["node_rank"], values["master_addr"]
    if rank >= profile.nnodes:
        raise ConfigError(
            f"node rank {rank} does not fit profile {profile.name!r}, which spans "
            f"{profile.nnodes} node(s): use 0..{profile.nnodes - 1}"
        )
    if profile.nnodes > 1 and not master and not dry_run:
        raise ConfigError(
            f"profile {profile.name!r} spans {profile.nnodes} nodes: set MASTER_ADDR "
            "(or --master-addr) to node 0's cluster address on every node"
        )
    return rank, master


def build(args: argparse.Namespace, env: Mapping[str, str]) -> ServeConfig:
    """Raises ProfileError or ConfigError with one user-facing line."""
    profile = load_profile(args, env)
    dry_run = bool(getattr(args, "dry_run", False))
    node_rank, master_addr = node_settings(profile, args, env, dry_run=dry_run)
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
        node_rank=node_rank,
        master_addr=master_addr,
    )
