"""Where the launcher keeps its local state (the API key, `up`'s logs), found the same way by
the launcher and by `chat`, so a key made by `mixvllm-serve up` is found in another shell."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

STATE_DIR_ENV = "MIXVLLM_STATE_DIR"


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


def read_api_key(env: Mapping[str, str]) -> str | None:
    """The launcher's local key if there is one (never creates it)."""
    try:
        key = api_key_file(env).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return key or None
