"""The option table's block for admins and per-user limits; config.py splices it into its
table (flags, `MIXVLLM_TERMINAL_*` variables, docs/configuration.md) and its values into
`Config`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mixvllm_common.options import Option, integer, number

from ..option_kit import terminal_option as _opt
from . import admins, limits

OPTIONS: tuple[Option, ...] = (
    _opt("admin_users", admins.parse_names, "",
         "with a team `--auth`: comma-separated users who may open the admin page "
         "(with `token` the owner is the admin)", metavar="NAMES"),
    _opt("admin_groups", admins.parse_names, "",
         "with a team `--auth`: comma-separated groups (Unix, or the login's) whose members "
         "are admins", metavar="GROUPS"),
    _opt("user_max_processes", integer(0, 10_000_000, "a number"), 4096,
         "with a team `--auth`, sessions as users' accounts: processes per user "
         "(`RLIMIT_NPROC`, counting all of the account's processes and threads); `0`: no limit",
         metavar="N"),
    _opt("user_max_memory", limits.parse_size, 0,
         "with a team `--auth`, sessions as users' accounts: memory per user (`4G`, `512M`): "
         "a cgroup v2 per user when the server may create cgroups, else `RLIMIT_DATA` per "
         "process; `0`: no limit", metavar="SIZE"),
    _opt("user_idle_timeout", number(-1e-9, 1e9, "seconds, 0 or more"), 0.0,
         "seconds without input after which a session ends even with a tab open (for a team: "
         "a tab left open overnight); `0`: never", metavar="SECONDS"),
)  # fmt: skip


def values(v: Mapping[str, Any]) -> dict[str, Any]:
    """This block's `Config` fields from the resolved options."""
    return {
        "admin_users": v["admin_users"] or (),  # the default is ""
        "admin_groups": v["admin_groups"] or (),
        "user_max_processes": v["user_max_processes"],
        "user_max_memory": v["user_max_memory"],
        "user_idle_timeout": v["user_idle_timeout"],
    }
