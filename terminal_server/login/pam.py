"""`--auth pam`: the box's Unix accounts, checked by PAM (`pamela`, JupyterHub's library).

PAM blocks (pam_unix waits about 2 s after a wrong password), so each check runs in a worker
thread; at most MAX_CONCURRENT run at once and at most MAX_WAITING wait, the rest are told
to retry. Root, system accounts and users outside `--allowed-users`/`--allowed-groups` never
reach PAM (their password is not an oracle), and every refusal takes at least FAIL_DELAY, so
the answer and its timing do not tell whether an account exists.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .. import identity
from ..config import Config

log = logging.getLogger("mixvllm.terminal")

MAX_CONCURRENT = 4
MAX_WAITING = 32
FAIL_DELAY = 2.0  # pam_unix's own delay after a failure
MAX_PASSWORD_CHARS = 1024


class Busy(Exception):
    """Too many logins are being checked at once; the user retries."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    groups: tuple[str, ...] = ()
    detail: str = ""  # for the server's log and the audit log: never the password


def groups_of(name: str) -> tuple[str, ...]:
    entry = pwd.getpwnam(name)
    names = []
    for gid in os.getgrouplist(name, entry.pw_gid):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return tuple(names)


def policy_refusal(config: Config, name: str) -> str | None:
    """Why `name` may not log in whatever its password, or None."""
    try:
        identity.check_name(name, config.min_uid)
        entry = pwd.getpwnam(name)
    except identity.Refusal as exc:
        return exc.detail
    except KeyError:
        return "no such account"
    if identity.system_account(entry.pw_uid, config.min_uid):  # check_name's, for a new uid
        return f"a system account (uid < {config.min_uid})"
    if not config.allowed_users and not config.allowed_groups:
        return None
    if name in config.allowed_users or config.allowed_groups.intersection(groups_of(name)):
        return None
    return "not in --allowed-users or --allowed-groups"


class PamAuthenticator:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._pool = ThreadPoolExecutor(MAX_CONCURRENT, thread_name_prefix="pam")
        self._pending = 0

    def _check(self, name: str, password: str) -> Verdict:
        import pamela  # noqa: PLC0415 - an optional extra (`team`); only --auth pam loads libpam

        refusal = policy_refusal(self.config, name)
        if refusal is not None:
            return Verdict(False, detail=refusal)
        try:
            # check=True: the account check (pam_acct_mgmt: expired, locked) as well.
            pamela.authenticate(name, password, service=self.config.pam_service, resetcred=0)
        except pamela.PAMError as exc:
            return Verdict(False, detail=f"PAM: {exc}")
        return Verdict(True, groups_of(name))

    async def authenticate(self, name: str, password: str) -> Verdict:
        """Raises Busy when too many checks are under way."""
        if self._pending >= MAX_CONCURRENT + MAX_WAITING:
            raise Busy
        if not password or "\x00" in password or len(password) > MAX_PASSWORD_CHARS:
            verdict = Verdict(False, detail="an empty or malformed password")
            await asyncio.sleep(FAIL_DELAY)
            return verdict
        started = time.monotonic()
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            verdict = await loop.run_in_executor(self._pool, self._check, name, password)
        finally:
            self._pending -= 1
        if not verdict.ok:
            await asyncio.sleep(max(0.0, FAIL_DELAY - (time.monotonic() - started)))
        return verdict

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
