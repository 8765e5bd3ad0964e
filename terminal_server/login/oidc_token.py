"""Checking an ID token (OpenID Connect Core 3.1.3.7): its signature against the provider's
key, with an asymmetric algorithm only (never `none`, never HS* keyed with a public key),
then its claims: `iss`, `aud`/`azp`, `exp`/`iat` with a small leeway, `nonce`."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

import jwt

from .oidc_errors import OidcError

# The algorithm decides the key type: an RSA key never verifies an HS256 or ES256 token.
ALGORITHMS = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC"}
LEEWAY_S = 60  # clocks drift; more would let an expired token in
MAX_AGE_S = 600  # an ID token issued longer ago than this is not from this login
MAX_TOKEN_CHARS = 16 * 1024


def header(token: str) -> tuple[str, str | None]:
    """The token's algorithm (one we accept) and key id, before any key is fetched."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise OidcError("token", "no ID token of a sane size in the token answer")
    try:
        head = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise OidcError("token", "the ID token is not a JWT") from None
    alg, kid = head.get("alg"), head.get("kid")
    if alg not in ALGORITHMS:
        raise OidcError("algorithm", f"the ID token is signed with {str(alg)[:16]!r}")
    return alg, kid if isinstance(kid, str) else None


def verify(
    token: str, jwk: Mapping[str, Any], *, issuer: str, client_id: str, nonce: str
) -> dict[str, Any]:
    """The token's claims, once its signature and claims are right; raises OidcError."""
    alg, _ = header(token)
    if jwk.get("kty") != ALGORITHMS[alg] or jwk.get("alg", alg) != alg:
        raise OidcError("algorithm", f"the provider's key is not for {alg}")
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=alg)
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            leeway=LEEWAY_S,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.InvalidSignatureError:
        raise OidcError("signature", "the ID token's signature does not verify") from None
    except jwt.ExpiredSignatureError:
        raise OidcError("expired", "the ID token has expired") from None
    except jwt.InvalidAudienceError:
        raise OidcError("audience", "the ID token is for another client") from None
    except jwt.InvalidIssuerError:
        raise OidcError("issuer", "the ID token is from another issuer") from None
    except jwt.ImmatureSignatureError:
        raise OidcError("expired", "the ID token is issued in the future") from None
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise OidcError("token", f"the ID token is not valid ({type(exc).__name__})") from None
    _check_more(claims, client_id, nonce)
    return claims


def _check_more(claims: Mapping[str, Any], client_id: str, nonce: str) -> None:
    aud = claims["aud"]
    azp = claims.get("azp")
    if isinstance(aud, list) and len(aud) > 1 and azp is None:
        raise OidcError("audience", "the ID token has several audiences and no azp")
    if azp is not None and azp != client_id:
        raise OidcError("audience", "the ID token's azp is another client")
    iat, exp = claims["iat"], claims["exp"]
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        raise OidcError("token", "the ID token's times are not numbers")
    if time.time() - iat > MAX_AGE_S + LEEWAY_S:
        raise OidcError("expired", "the ID token was issued too long ago")
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
        raise OidcError("nonce", "the ID token's nonce is not this login's")
