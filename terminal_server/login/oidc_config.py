"""`--auth oidc`'s settings: their options (config.py puts them in the server's one table) and
the frozen value they become. The client secret comes from the environment or a file, never
a flag: a flag shows in `ps` to every user of the box."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mixvllm_common import defaults
from mixvllm_common.options import Option, boolean

from ..option_kit import terminal_option as _opt

ENV_PREFIX = defaults.TERMINAL_ENV_PREFIX
SECRET_ENV = ENV_PREFIX + "OIDC_CLIENT_SECRET"
CALLBACK_PATH = "login/oidc/callback"  # under the base path: the redirect URI to register
MAP_STEPS = ("lowercase", "strip-domain", "prefix")


class OidcConfigError(ValueError):
    """A bad `--oidc-*` setting; the message is one line for the operator."""


@dataclass(frozen=True)
class NameMap:
    """The ID token's user name -> a Unix account name (`--oidc-username-map`)."""

    lowercase: bool = True
    strip_domain: str | None = None  # "example.org": alice@example.org -> alice
    prefix: str = ""


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    name_map: NameMap = NameMap()
    uid_range: tuple[int, int] = (20000, 29999)
    home_base: Path = Path("/home")
    shell: str = "/bin/bash"
    create_accounts: bool = True
    label: str = ""  # the login page's "Sign in with …"


OIDC_OPTIONS: tuple[Option, ...] = (
    _opt("oidc_issuer", str, None,
         "with `--auth oidc`: the provider's issuer URL (its "
         "`/.well-known/openid-configuration` is read from there)", metavar="URL"),
    _opt("oidc_client_id", str, None,
         "with `--auth oidc`: this server's client id at the provider", metavar="ID"),
    Option("oidc_client_secret", (), (SECRET_ENV,), str, None,
           "with `--auth oidc`: the client secret (an environment variable, never a flag)"),
    _opt("oidc_client_secret_file", str, None,
         "with `--auth oidc`: a file holding the client secret (instead of "
         f"`{SECRET_ENV}`)", metavar="FILE"),
    _opt("oidc_scopes", str, "openid profile email",
         "with `--auth oidc`: the scopes asked for (space-separated; add the one that "
         "brings the groups claim, e.g. `groups`)", metavar="SCOPES"),
    _opt("oidc_username_claim", str, "preferred_username",
         "with `--auth oidc`: the ID token claim that names the user", metavar="CLAIM"),
    _opt("oidc_groups_claim", str, "groups",
         "with `--auth oidc`: the ID token claim that lists the user's groups (for "
         "`--allowed-groups`)", metavar="CLAIM"),
    _opt("oidc_username_map", str, "lowercase",
         "with `--auth oidc`: how the claim becomes a Unix name: comma-separated "
         "`lowercase`, `strip-domain=DOMAIN` (`a@DOMAIN` -> `a`; another domain is "
         "refused), `prefix=P`; the result must be a Unix account name", metavar="STEPS"),
    _opt("oidc_uid_range", str, "20000-29999",
         "with `--auth oidc`, as root: the uids of accounts made on a user's first login",
         metavar="LOW-HIGH"),
    _opt("oidc_home_base", str, "/home",
         "with `--auth oidc`, as root: where first-login accounts get their home (the "
         "volume, in a container)", metavar="DIR"),
    _opt("oidc_shell", str, "/bin/bash",
         "with `--auth oidc`, as root: the shell of first-login accounts", metavar="PATH"),
    _opt("oidc_create_accounts", boolean, True,
         "with `--auth oidc`, as root: make a Unix account on a user's first login "
         "(without root, a user with no account is refused)",
         off_flag="--no-oidc-create-accounts"),
    _opt("oidc_label", str, None,
         "with `--auth oidc`: the provider's name on the login page's button",
         metavar="TEXT", shown_default="the issuer's host name"),
)  # fmt: skip


def parse_name_map(text: str) -> NameMap:
    lowercase, domain, prefix = False, None, ""
    for step in (s.strip() for s in text.split(",") if s.strip()):
        name, _, arg = step.partition("=")
        if name == "lowercase" and not arg:
            lowercase = True
        elif name == "strip-domain" and re.fullmatch(r"[A-Za-z0-9.-]{1,253}", arg):
            domain = arg.lower()
        elif name == "prefix" and re.fullmatch(r"[a-z_][a-z0-9_-]{0,15}", arg):
            prefix = arg
        else:
            raise OidcConfigError(
                f"--oidc-username-map: {step!r} is not one of lowercase, "
                "strip-domain=DOMAIN, prefix=P (a Unix-name start)"
            )
    return NameMap(lowercase, domain, prefix)


def _uid_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        lo = hi = -1
    if not 1000 <= lo <= hi < 2**31 - 2:
        raise OidcConfigError("--oidc-uid-range must be LOW-HIGH with 1000 <= LOW <= HIGH")
    return lo, hi


def _secret(v: Mapping[str, Any]) -> str:
    if v["oidc_client_secret"] and v["oidc_client_secret_file"]:
        raise OidcConfigError(f"{SECRET_ENV} and --oidc-client-secret-file exclude each other")
    secret = v["oidc_client_secret"] or ""
    if v["oidc_client_secret_file"]:
        try:
            secret = Path(v["oidc_client_secret_file"]).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise OidcConfigError(
                f"--oidc-client-secret-file: cannot read it ({type(exc).__name__})"
            ) from None
    if not secret:
        raise OidcConfigError(
            f"--auth oidc needs the client secret in {SECRET_ENV} or --oidc-client-secret-file"
        )
    return secret


def oidc_settings(v: Mapping[str, Any], public_url: str | None) -> OidcSettings:
    """The settings for `--auth oidc` from the resolved option values; raises OidcConfigError."""
    issuer = (v["oidc_issuer"] or "").strip()  # as the provider spells it: compared exactly
    url = urlsplit(issuer)
    if url.scheme not in ("https", "http") or not url.hostname:
        raise OidcConfigError("--auth oidc needs --oidc-issuer, an https:// URL")
    if url.scheme == "http" and url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise OidcConfigError("--oidc-issuer must be https:// (plain http only on loopback)")
    if not v["oidc_client_id"]:
        raise OidcConfigError("--auth oidc needs --oidc-client-id")
    if not public_url:
        raise OidcConfigError(
            "--auth oidc needs --public-url: the redirect URI registered at the provider is "
            f"<public URL>{CALLBACK_PATH}"
        )
    scopes = tuple(v["oidc_scopes"].split())
    if "openid" not in scopes:
        scopes = ("openid", *scopes)
    return OidcSettings(
        issuer=issuer,
        client_id=v["oidc_client_id"],
        client_secret=_secret(v),
        scopes=scopes,
        username_claim=v["oidc_username_claim"],
        groups_claim=v["oidc_groups_claim"],
        name_map=parse_name_map(v["oidc_username_map"]),
        uid_range=_uid_range(v["oidc_uid_range"]),
        home_base=Path(v["oidc_home_base"]),
        shell=v["oidc_shell"],
        create_accounts=v["oidc_create_accounts"],
        label=v["oidc_label"] or url.hostname,
    )
