"""The authorization-code flow with PKCE (RFC 6749, 7636; OpenID Connect Core 3.1): where to
send the browser, and what to make of the answer it brings back, up to a Unix user name.
Everything that talks to the provider is async (Tornado's client): a slow provider holds
only the login that waits for it."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import HTTPRequest

from .. import identity
from . import oidc_token
from .oidc_accounts import ensure_account
from .oidc_config import OidcSettings
from .oidc_errors import OidcError
from .oidc_names import check_allowed, groups, unix_name
from .oidc_pending import PendingLogins, pkce_challenge
from .oidc_provider import ProviderCache, fetch_json

log = logging.getLogger("mixvllm.terminal")
ERROR_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz_")


@dataclass(frozen=True)
class OidcUser:
    name: str
    groups: tuple[str, ...]
    next_path: str


class OidcFlow:
    """One per server: the provider's cache, the logins under way, account creation."""

    def __init__(
        self,
        settings: OidcSettings,
        redirect_uri: str,
        *,
        min_uid: int,
        allowed_users: Collection[str] = (),
        allowed_groups: Collection[str] = (),
    ) -> None:
        self.settings = settings
        self.redirect_uri = redirect_uri
        self.min_uid = min_uid
        self.allowed_users = frozenset(allowed_users)
        self.allowed_groups = frozenset(allowed_groups)
        self.provider = ProviderCache(settings.issuer)
        self.pending = PendingLogins()
        # One useradd at a time: two would pick the same free uid.
        self._accounts = ThreadPoolExecutor(1, thread_name_prefix="oidc-useradd")
        if os.geteuid() != 0:
            log.warning(
                "--auth oidc without root: only users who already have a Unix account here "
                "may log in (no account is made), and sessions run as the server's user"
            )

    def close(self) -> None:
        self._accounts.shutdown(wait=False)

    async def begin(self, next_path: str, browser: str) -> str:
        """The provider's authorization URL for a new login from `browser`."""
        endpoints = await self.provider.endpoints()
        pending = self.pending.begin(next_path, browser)
        query = urlencode({
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.settings.scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": pkce_challenge(pending.verifier),
            "code_challenge_method": "S256",
        })  # fmt: skip
        sep = "&" if "?" in endpoints.authorization else "?"
        return endpoints.authorization + sep + query

    async def complete(self, args: Mapping[str, str], browser: str | None) -> OidcUser:
        """The user the provider's answer (the callback's query) names; raises OidcError."""
        pending = self.pending.finish(args.get("state"), browser)
        error = args.get("error")
        if error is not None:
            shown = error[:40] if set(error[:40]) <= ERROR_CHARS else "an error"
            raise OidcError("provider", f"the provider refused the login ({shown})")
        if "iss" in args and args["iss"] != self.settings.issuer:  # RFC 9207: mix-up attacks
            raise OidcError("issuer", "the answer comes from another issuer")
        code = args.get("code")
        if not code or len(code) > 4096:
            raise OidcError("code", "the answer has no authorization code")
        tokens = await self._exchange(code, pending.verifier)
        id_token = tokens.get("id_token")
        _, kid = oidc_token.header(id_token)  # type: ignore[arg-type]  # header() checks it
        jwk = await self.provider.key(kid)
        claims = oidc_token.verify(
            id_token,  # type: ignore[arg-type]
            jwk,
            issuer=self.settings.issuer,
            client_id=self.settings.client_id,
            nonce=pending.nonce,
        )
        name = unix_name(claims, self.settings.username_claim, self.settings.name_map)
        user_groups = groups(claims, self.settings.groups_claim)
        check_allowed(name, user_groups, self.allowed_users, self.allowed_groups)
        try:
            identity.check_name(name, self.min_uid)
        except identity.Refusal as exc:
            raise OidcError("account", exc.detail) from None
        return OidcUser(name, user_groups, pending.next_path)

    async def account(self, user: OidcUser) -> bool:
        """Find or (as root) make the user's Unix account; True when it was made now."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._accounts, ensure_account, user.name, self.settings, self.min_uid
        )

    async def _exchange(self, code: str, verifier: str) -> dict[str, Any]:
        endpoints = await self.provider.endpoints()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        methods = endpoints.token_auth_methods
        if "client_secret_basic" in methods or not methods:
            # RFC 6749 2.3.1: id and secret form-encoded before Basic's base64.
            settings = self.settings
            pair = ":".join(quote(p, safe="") for p in (settings.client_id, settings.client_secret))
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif "client_secret_post" in methods:
            form |= {"client_id": self.settings.client_id,
                     "client_secret": self.settings.client_secret}  # fmt: skip
        else:
            raise OidcError("exchange", "the provider takes no client secret at its token endpoint")
        request = HTTPRequest(endpoints.token, method="POST", headers=headers, body=urlencode(form))
        answer: dict[str, Any] = await fetch_json(request, "exchange")
        return answer
