"""What the server knows of the OpenID Connect provider: its discovery document and its
signing keys (JWKS), fetched without blocking the loop, each with a deadline and a size
bound, and cached. An ID token signed with a key id the cache does not know makes it fetch
the keys again (the provider rotated them), at most once per REFRESH_S."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .oidc_errors import OidcError

BODY_LIMIT = 256 * 1024  # a discovery document or key set; more is not read
TIMEOUT_S = 10.0
CACHE_S = 3600.0  # discovery and keys are fetched again after this
REFRESH_S = 30.0  # an unknown key id fetches the keys again at most this often
MAX_KEYS = 50
ERROR_RE = re.compile(r"[a-z_]{1,40}")  # an OAuth error code; anything else is not shown
USER_AGENT = "mixvllm-terminal (OpenID Connect client)"


@dataclass(frozen=True)
class Endpoints:
    issuer: str
    authorization: str
    token: str
    jwks_uri: str
    token_auth_methods: tuple[str, ...]


def _https_or_loopback(url: object, issuer: str) -> str:
    """An endpoint must be https:// (http:// only when the issuer itself is loopback http)."""
    if not isinstance(url, str):
        raise OidcError("discovery", "an endpoint is missing from the discovery document")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and urlsplit(issuer).scheme == "http" and parts.hostname:
        return url
    raise OidcError("discovery", "an endpoint in the discovery document is not https")


def parse_discovery(doc: Mapping[str, Any], issuer: str) -> Endpoints:
    if doc.get("issuer") != issuer:
        # OpenID Connect Discovery 4.3: it must be exactly the issuer asked for.
        raise OidcError("discovery", "the discovery document names another issuer")
    methods = doc.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
    return Endpoints(
        issuer=issuer,
        authorization=_https_or_loopback(doc.get("authorization_endpoint"), issuer),
        token=_https_or_loopback(doc.get("token_endpoint"), issuer),
        jwks_uri=_https_or_loopback(doc.get("jwks_uri"), issuer),
        token_auth_methods=tuple(m for m in methods if isinstance(m, str)),
    )


async def fetch_json(request: HTTPRequest, what: str) -> Any:
    """The JSON answer to `request`, or OidcError(what); never waits past TIMEOUT_S."""
    request.connect_timeout = request.request_timeout = TIMEOUT_S
    request.follow_redirects = False
    request.headers["Accept"] = "application/json"
    request.headers["User-Agent"] = USER_AGENT
    client = AsyncHTTPClient(force_instance=True, max_body_size=BODY_LIMIT)
    try:
        response = await client.fetch(request, raise_error=False)
    except (OSError, HTTPClientError) as exc:
        raise OidcError(what, f"the provider cannot be reached ({type(exc).__name__})") from None
    finally:
        client.close()
    try:
        body = json.loads(response.body or b"")
    except ValueError:
        body = None
    if response.code != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, str) and ERROR_RE.fullmatch(error) else None
        raise OidcError(
            what, f"the provider answered {response.code}" + (f" ({error})" * bool(error))
        )
    return body


class ProviderCache:
    """The discovery document and key set of one issuer; one writer, the event loop."""

    def __init__(self, issuer: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self._clock = clock
        self._endpoints: tuple[float, Endpoints] | None = None
        self._keys: tuple[float, dict[str, dict[str, Any]]] | None = None

    async def endpoints(self) -> Endpoints:
        now = self._clock()
        if self._endpoints is None or now - self._endpoints[0] > CACHE_S:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = await fetch_json(HTTPRequest(url), "discovery")
            self._endpoints = (now, parse_discovery(doc, self.issuer))
        return self._endpoints[1]

    async def key(self, kid: str | None) -> dict[str, Any]:
        """The signing key (a JWK) for `kid`; refetches the set once for one it lacks."""
        now = self._clock()
        fresh = self._keys is not None and now - self._keys[0] <= CACHE_S
        if not fresh or (self._pick(kid) is None and now - self._keys_at() > REFRESH_S):
            endpoints = await self.endpoints()
            doc = await fetch_json(HTTPRequest(endpoints.jwks_uri), "jwks")
            self._keys = (now, parse_jwks(doc))
        key = self._pick(kid)
        if key is None:
            raise OidcError("signature", "the token's key is not among the provider's keys")
        return key

    def _keys_at(self) -> float:
        return -1e18 if self._keys is None else self._keys[0]

    def _pick(self, kid: str | None) -> dict[str, Any] | None:
        keys = {} if self._keys is None else self._keys[1]
        if kid is None:  # no key id: only unambiguous with a single key
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)


def parse_jwks(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """kid -> JWK for the signing keys in a JWKS (keys for encryption left out)."""
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise OidcError("jwks", "the provider's key set has no keys")
    out: dict[str, dict[str, Any]] = {}
    for n, jwk in enumerate(keys[:MAX_KEYS]):
        if isinstance(jwk, dict) and jwk.get("use", "sig") == "sig" and "d" not in jwk:
            out[str(jwk.get("kid", f"#{n}"))] = jwk
    return out
