"""Who an ID token names: its user claim mapped to a Unix account name (`--oidc-username-map`)
and its groups claim, and whether `--allowed-users` / `--allowed-groups` let them in."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ..identity import NAME_RE
from .oidc_config import NameMap
from .oidc_errors import OidcError

MAX_GROUPS = 256
MAX_CLAIM_CHARS = 256


def unix_name(claims: Mapping[str, Any], claim: str, mapping: NameMap) -> str:
    value = claims.get(claim)
    if not isinstance(value, str) or not value or len(value) > MAX_CLAIM_CHARS:
        raise OidcError("user", f"the ID token has no usable {claim!r} claim")
    name = value.strip()
    if mapping.lowercase:
        name = name.lower()
    if mapping.strip_domain is not None:
        local, at, domain = name.rpartition("@")
        if at and domain.lower() == mapping.strip_domain:
            name = local
    name = mapping.prefix + name
    if not NAME_RE.fullmatch(name):
        # Says its length only: the claim is the provider's (a user's) text.
        raise OidcError("user", f"{claim} does not map to a Unix account name ({len(name)} chars)")
    return name


def groups(claims: Mapping[str, Any], claim: str) -> tuple[str, ...]:
    value = claims.get(claim, ())
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(g for g in value[:MAX_GROUPS] if isinstance(g, str) and len(g) <= MAX_CLAIM_CHARS)


def check_allowed(
    name: str, user_groups: Collection[str], users: Collection[str], allowed_groups: Collection[str]
) -> None:
    """Raise OidcError unless the user may log in: anyone when both lists are empty."""
    if not users and not allowed_groups:
        return
    # Keycloak sends group paths ("/team") unless its mapper says otherwise.
    if name in users or any(g.lstrip("/") in allowed_groups for g in user_groups):
        return
    raise OidcError("group", f"user {name} is not in --allowed-users nor --allowed-groups")
