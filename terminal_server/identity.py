"""Who a request is: the one owner (`--auth token`), or the user a trusted reverse proxy names
in a header (`--auth proxy`).

A proxy address alone proves nothing on a shared box: every local process (the users' own
sessions included) can reach loopback. So the proxy also sends the server's token, and the
header is believed only from a trusted address *with* that token.
"""

from __future__ import annotations

import ipaddress
import pwd
import re
from dataclasses import dataclass

from tornado import httputil

from .config import Config
from .session_user import NOBODY_UID

OWNER = "owner"  # --auth token: the one implicit user, who owns every session
# A Unix-account-safe name (useradd's default NAME_REGEX), at most 32 characters.
NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def system_account(uid: int, min_uid: int) -> bool:
    return uid < min_uid or uid == NOBODY_UID


@dataclass(frozen=True)
class Refusal(Exception):
    """Why a request has no user; `reason` is a key of auth.REFUSALS."""

    reason: str
    detail: str  # for the log: never the header's value


def peer_trusted(config: Config, remote_ip: str | None) -> bool:
    try:
        peer = ipaddress.ip_address((remote_ip or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in net for net in config.trusted_proxies)


def check_name(name: str, min_uid: int) -> None:
    """Raise Refusal unless `name` may log in: a safe name, not root nor a system account."""
    if not NAME_RE.fullmatch(name):
        raise Refusal("user", f"a user name that is not a Unix account name ({len(name)} chars)")
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = None  # no account: without root, sessions run as the server's user anyway
    if name == "root" or (uid is not None and system_account(uid, min_uid)):
        raise Refusal("account", f"user {name}: root or a system account (uid < {min_uid})")


def proxy_user(config: Config, request: httputil.HTTPServerRequest) -> str:
    """The user the trusted proxy named; raises Refusal. The token was checked before."""
    name = request.headers.get(config.proxy_user_header, "").strip()
    if not name:
        raise Refusal("user", f"no {config.proxy_user_header} header")
    check_name(name, config.min_uid)
    return name
