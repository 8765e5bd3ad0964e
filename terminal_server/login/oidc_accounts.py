"""Unix accounts for OpenID Connect users: found, or (as root) made on their first login with
`useradd`: a uid from `--oidc-uid-range` that no account or group holds, a private group, a
0700 home under `--oidc-home-base`, the configured shell and no password. An existing account
is used only when it is a regular one (uid >= --min-uid); a system account's name is refused
before this (identity.check_name)."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import subprocess
from pathlib import Path

from ..session_user import NOBODY_UID
from .oidc_config import OidcSettings
from .oidc_errors import OidcError

log = logging.getLogger("mixvllm.terminal")
USERADD = "/usr/sbin/useradd"
TIMEOUT_S = 30.0


def _free_uid(low: int, high: int) -> int:
    taken = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    for uid in range(low, high + 1):
        if uid not in taken and uid != NOBODY_UID:
            return uid
    raise OidcError("account", f"no free uid left in --oidc-uid-range {low}-{high}")


def existing(name: str, min_uid: int) -> bool:
    """Whether `name` has an account we may use; raises OidcError for a system one."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return False
    if entry.pw_uid < min_uid or entry.pw_uid == NOBODY_UID:
        raise OidcError("account", f"user {name}: a system account (uid < {min_uid})")
    return True


def ensure_account(name: str, settings: OidcSettings, min_uid: int) -> bool:
    """Make `name`'s account unless it has one; True when it was made. Blocks (run it off the
    event loop, one at a time: two useradds would pick the same uid)."""
    if existing(name, min_uid):
        return False
    if os.geteuid() != 0 or not settings.create_accounts:
        raise OidcError("account", f"user {name} has no Unix account on this server")
    try:
        grp.getgrnam(name)
    except KeyError:
        pass
    else:  # useradd --user-group would fail; a group of that name is not this user's
        raise OidcError("account", f"user {name}: a group of that name exists already")
    uid = _free_uid(*settings.uid_range)
    home = settings.home_base / name
    settings.home_base.mkdir(parents=True, exist_ok=True)
    command = [
        USERADD, "--uid", str(uid), "--user-group", "--create-home", "--home-dir", str(home),
        "--shell", settings.shell, "--comment", "mixvllm (OpenID Connect)", "--key", "UMASK=077",
        "--", name,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OidcError("account", f"useradd {name}: {type(exc).__name__}") from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise OidcError("account", f"useradd {name}: {tail[0][:200]}")
    Path(home).chmod(0o700)
    log.info("made the account %s (uid %d, home %s) on its first OpenID Connect login",
             name, uid, home)  # fmt: skip
    return True
