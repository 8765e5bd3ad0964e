"""The option table's block for the model pass-through of the team modes; config.py splices it
into its table and its values into `Config`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixvllm_common.options import Option, integer
from mixvllm_common.state import state_dir

from ..option_kit import terminal_option as _opt

OPTIONS: tuple[Option, ...] = (
    _opt("user_model_concurrency", integer(1, 1000, "a number"), 4,
         "with a team `--auth` mode: model requests at once per user; one more gets 429",
         metavar="N"),
    _opt("user_daily_tokens", integer(0, 10**12, "a number"), 0,
         "with a team `--auth` mode: prompt and completion tokens per user per day (reset at "
         "local midnight, kept across restarts); a request past it gets 429; `0`: no quota",
         metavar="N"),
    _opt("model_concurrency", integer(1, 100_000, "a number"), 64,
         "with a team `--auth` mode: model requests at once through the server, all users "
         "together; one more gets 503", metavar="N"),
)  # fmt: skip


def values(v: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """This block's `Config` fields from the resolved options."""
    usage_file: Path | None = None if v["auth"] == "token" else state_dir(env) / "model-usage.json"
    return {
        "user_model_concurrency": v["user_model_concurrency"],
        "user_daily_tokens": v["user_daily_tokens"],
        "model_concurrency": v["model_concurrency"],
        "model_usage_file": usage_file,
    }
