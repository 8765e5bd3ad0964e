"""CSRF protection in login modes: every state-changing request (any method but GET, HEAD and
OPTIONS) carries a token that only a page of this server can know, as the header
`X-CSRF-Token` or the form field `_xsrf`.

Logged in, the token is the login's own (logins.py). Before login (the login form, an OpenID
provider's callback), it is derived from a random pre-login cookie with a key that never
leaves the server, so a cookie someone else managed to plant does not forge it either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from tornado import web
from tornado.escape import xhtml_escape

from ..context import Context
from .cookies import login_cookie, prelogin_cookie_name, set_prelogin_cookie

HEADER = "X-CSRF-Token"
FIELD = "_xsrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_KEY = secrets.token_bytes(32)  # per process: a restart ends every login anyway
MAX_TOKEN_CHARS = 128


def _prelogin_token(cookie: str) -> str:
    return hmac.new(_KEY, cookie.encode("utf-8", "replace"), hashlib.sha256).hexdigest()


def csrf_token(handler: web.RequestHandler, ctx: Context) -> str:
    """The token a page of this request's user sends back: the login's, or before login one
    tied to the pre-login cookie (set here if the browser has none yet)."""
    login = ctx.logins.lookup(login_cookie(handler, ctx))
    if login is not None:
        return login.csrf
    cookie = handler.get_cookie(prelogin_cookie_name(ctx))
    if not cookie or len(cookie) > MAX_TOKEN_CHARS:
        cookie = secrets.token_urlsafe(24)
        set_prelogin_cookie(handler, ctx, cookie)
    return _prelogin_token(cookie)


def sent_token(handler: web.RequestHandler) -> str | None:
    header = handler.request.headers.get(HEADER)
    if header:
        return header
    values = handler.request.body_arguments.get(FIELD)
    return values[0].decode("utf-8", "replace") if values else None


def check_csrf(handler: web.RequestHandler, ctx: Context) -> bool:
    """Whether the request carries this user's token (the login's, or the pre-login one)."""
    sent = sent_token(handler)
    if not sent or len(sent) > MAX_TOKEN_CHARS:
        return False
    candidates = []
    login = ctx.logins.lookup(login_cookie(handler, ctx))
    if login is not None:
        candidates.append(login.csrf)
    cookie = handler.get_cookie(prelogin_cookie_name(ctx))
    if cookie and len(cookie) <= MAX_TOKEN_CHARS:
        candidates.append(_prelogin_token(cookie))
    return any(hmac.compare_digest(sent.encode(), c.encode()) for c in candidates)


def login_meta(handler: web.RequestHandler, ctx: Context) -> bytes:
    """The page's `<meta>` tags in login modes: the CSRF token its requests send back (the
    share API, logout) and the user's name for the logout button."""
    token = xhtml_escape(csrf_token(handler, ctx))
    user = xhtml_escape(str(handler.current_user or ""))
    return (
        f'<meta name="mixvllm-csrf" content="{token}"><meta name="mixvllm-user" content="{user}">'
    ).encode()
