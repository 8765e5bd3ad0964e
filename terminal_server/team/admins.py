"""Who is an admin: the owner with `--auth token`; in a team mode, a user named in
`--admin-users` or a member of a group in `--admin-groups` (a Unix group of the box, or a group
the login brought, such as an OIDC claim)."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")


def parse_names(text: str) -> tuple[str, ...]:
    """The option table's kind for `--admin-users` and `--admin-groups`."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not all(_NAME_RE.fullmatch(name) for name in names):
        raise ValueError("must be comma-separated user or group names")
    return names


def unix_groups(user: str) -> set[str]:
    """The names of the account's groups on this box (primary and supplementary); none if it
    has no account."""
    try:
        gid = pwd.getpwnam(user).pw_gid
    except KeyError:
        return set()
    try:
        ids = os.getgrouplist(user, gid)
    except OSError:
        ids = [gid]
    names = set()
    for group_id in ids:
        with contextlib.suppress(KeyError):
            names.add(grp.getgrgid(group_id).gr_name)
    return names


def is_admin(config: Config, user: str | None, groups: Iterable[str] = ()) -> bool:
    """Whether `user` may use the admin page; `groups` are the login's own (OIDC claims)."""
    if user is None:
        return False
    if config.auth == "token":
        return True  # the one owner (identity.OWNER)
    if user in config.admin_users:
        return True
    wanted = set(config.admin_groups)
    if not wanted:
        return False
    return bool(wanted & set(groups)) or bool(wanted & unix_groups(user))
