"""Logins under way: sent to the provider, not back yet. Each holds its PKCE verifier, nonce
and where to go afterwards, server-side, under its `state`; it is used once, binds to the
browser that began it (a cookie's hash), and ends after TTL_S. Bounded: past MAX_PENDING the
oldest is dropped, so a flood of login starts costs memory only up to that."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .oidc_errors import OidcError

TTL_S = 600.0
MAX_PENDING = 1000
MAX_STATE_CHARS = 64


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(verifier))."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _digest(browser: str) -> bytes:
    return hashlib.sha256(browser.encode("utf-8", "replace")).digest()


@dataclass(frozen=True)
class Pending:
    state: str
    nonce: str
    verifier: str  # PKCE code_verifier: 43 characters of 256 random bits
    next_path: str
    browser: bytes  # sha256 of the browser cookie that began this login
    started: float


class PendingLogins:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: OrderedDict[str, Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def begin(self, next_path: str, browser: str) -> Pending:
        self._expire()
        while len(self._pending) >= MAX_PENDING:
            self._pending.popitem(last=False)
        pending = Pending(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(32),
            next_path=next_path,
            browser=_digest(browser),
            started=self._clock(),
        )
        self._pending[pending.state] = pending
        return pending

    def finish(self, state: str | None, browser: str | None) -> Pending:
        """The login `state` names, removed (a second use is refused); raises OidcError."""
        self._expire()
        if not state or len(state) > MAX_STATE_CHARS:
            raise OidcError("state", "the answer has no state of ours")
        pending = self._pending.pop(state, None)
        if pending is None:
            raise OidcError("state", "unknown, used or expired state")
        if browser is None or not hmac.compare_digest(pending.browser, _digest(browser)):
            raise OidcError("state", "the login was begun in another browser")
        return pending

    def _expire(self) -> None:
        now = self._clock()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if now - oldest.started <= TTL_S:
                break
            self._pending.popitem(last=False)
