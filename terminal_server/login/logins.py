"""The logins the server knows: a random id (the cookie's value) -> who logged in, how, and
their CSRF token. Kept in memory only: a restart logs everyone out (their sessions stay until
the server stops, as they do for a closed tab).

Bounded: at most `max_count` logins; a new one past that ends the least recently used. A
login ends `max_age` seconds after it began, or `idle` seconds after its last request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

ID_BYTES = 32  # 256 bits from secrets: the cookie cannot be guessed
MAX_COOKIE_CHARS = 64  # longer values are no id of ours (and are not hashed)


@dataclass
class Login:
    user: str
    method: str  # "pam", "oidc"
    groups: tuple[str, ...]
    csrf: str  # sent back with every state-changing request (csrf.py)
    started: float
    seen: float = field(compare=False)


class LoginStore:
    """One writer: the event loop's thread. Ids are stored hashed, so a memory dump or a
    debug print of the store does not hand out live cookies."""

    def __init__(
        self,
        max_age: float,
        idle: float,
        max_count: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.idle = idle
        self.max_count = max_count
        self._clock = clock
        self._logins: OrderedDict[bytes, Login] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._logins)

    def start(self, user: str, method: str, groups: Iterable[str] = ()) -> str:
        """A new login for `user`; returns its cookie value (never stored as such)."""
        cookie = secrets.token_urlsafe(ID_BYTES)
        now = self._clock()
        while len(self._logins) >= self.max_count:
            self._logins.popitem(last=False)
        self._logins[_key(cookie)] = Login(
            user, method, tuple(groups), secrets.token_urlsafe(24), now, now
        )
        return cookie

    def lookup(self, cookie: str | None) -> Login | None:
        """The live login of that cookie (its idle clock restarts), or None."""
        if not cookie or len(cookie) > MAX_COOKIE_CHARS:
            return None
        key = _key(cookie)
        login = self._logins.get(key)
        if login is None:
            return None
        now = self._clock()
        if now - login.started >= self.max_age or now - login.seen >= self.idle:
            del self._logins[key]
            return None
        login.seen = now
        self._logins.move_to_end(key)
        return login

    def end(self, cookie: str | None) -> Login | None:
        """End that login (logout); returns it, or None if there was none."""
        if not cookie or len(cookie) > MAX_COOKIE_CHARS:
            return None
        return self._logins.pop(_key(cookie), None)

    def end_user(self, user: str) -> int:
        """End every login of `user` (an admin's action); returns how many there were."""
        keys = [k for k, login in self._logins.items() if login.user == user]
        for key in keys:
            del self._logins[key]
        return len(keys)

    def users(self) -> dict[str, int]:
        """Who is logged in now, with how many logins each (expired ones are dropped)."""
        now = self._clock()
        expired = [
            k
            for k, login in self._logins.items()
            if now - login.started >= self.max_age or now - login.seen >= self.idle
        ]
        for key in expired:
            del self._logins[key]
        counts: dict[str, int] = {}
        for login in self._logins.values():
            counts[login.user] = counts.get(login.user, 0) + 1
        return counts


def _key(cookie: str) -> bytes:
    return hashlib.sha256(cookie.encode("utf-8", "replace")).digest()
