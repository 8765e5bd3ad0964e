"""How the terminal server names an option: a flag after its `dest`, falling back to the
`MIXVLLM_TERMINAL_<DEST>` variable. Shared by the blocks of its option table (config.py,
login/oidc_config.py, team/options.py, model_proxy/options.py)."""

from __future__ import annotations

from typing import Any

from mixvllm_common.defaults import TERMINAL_ENV_PREFIX
from mixvllm_common.options import Kind, Option


def terminal_option(dest: str, kind: Kind, default: object, help_: str, **more: Any) -> Option:
    flag = "--" + dest.replace("_", "-")
    return Option(dest, (flag,), (TERMINAL_ENV_PREFIX + dest.upper(),), kind, default, help_,
                  **more)  # fmt: skip
