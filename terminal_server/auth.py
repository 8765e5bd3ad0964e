"""Who may use the server: the Host check (DNS rebinding), the token, and how a request is
refused. Every route's `prepare` goes through here, before the request's body is read."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlencode, urlparse

from tornado import http1connection, httputil, web

from . import identity
from .config import is_loopback_host
from .context import Context
from .login.cookies import login_cookie
from .login.csrf import SAFE_METHODS, check_csrf

log = logging.getLogger("mixvllm.terminal")

# Why a request was refused (the metric's label) -> the one line the client reads.
REFUSALS = {
    "host": "Host not allowed: this server only answers to localhost names.",
    "token": "Token required: open the URL printed when the server started.",
    "share": "This share link has ended or is not valid.",
    "origin": "Cross-origin request refused.",
    "body": "Request body too large for this address.",
    "proxy": "Sign in through the team's proxy: this address may not reach the server directly.",
    "user": "No valid user name from the proxy: sign in again.",
    "account": "This account may not use the terminal.",
    "admin": "Admins only: this account may not use the admin page.",
    "login": "Log in first: open the login page.",
    "csrf": "Missing or wrong CSRF token: reload the page and try again.",
}


def host_allowed(ctx: Context, request: httputil.HTTPServerRequest) -> bool:
    if not ctx.config.is_loopback:
        return True
    host = request.host or ""
    hostname = urlparse(f"//{host}").hostname or ""
    return is_loopback_host(hostname)


def origin_allowed(ctx: Context, request: httputil.HTTPServerRequest, origin: str) -> bool:
    """`origin` is this server's (as the request addressed it) or an allow-listed one."""
    origin = origin.rstrip("/")
    if origin in ctx.config.allowed_origins:
        return True
    parsed = urlparse(origin)  # "null" (a sandboxed or file page) has no scheme
    # Same origin is scheme and host:port: https://host:P is not this plain-HTTP server.
    return parsed.scheme == request.protocol and (
        parsed.netloc.lower() == (request.host or "").lower()
    )


def same_origin(ctx: Context, request: httputil.HTTPServerRequest) -> bool:
    """The request sent no Origin (not from a page), or an allowed one."""
    origin = request.headers.get("Origin")
    return origin is None or origin_allowed(ctx, request, origin)


def token_ok(ctx: Context, candidate: str | None) -> bool:
    if ctx.token is None:
        return True
    if not candidate:
        return False
    return hmac.compare_digest(candidate.encode(), ctx.token.encode())


def presented_token(handler: web.RequestHandler, ctx: Context) -> str | None:
    auth = handler.request.headers.get("Authorization", "")
    if auth.startswith(("Bearer ", "token ")):
        # Tornado decodes header bytes as Latin-1; clients such as curl send UTF-8.
        raw = auth.split(" ", 1)[1].strip().encode("latin-1", "replace")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    cookie = handler.get_cookie(ctx.cookie_name)
    return None if cookie is None else unquote(cookie)


def refuse(handler: web.RequestHandler, ctx: Context, reason: str, status: int = 403) -> None:
    """Answer with the reason's one line, count it and log it (without the query string).

    Called from `prepare`: the connection then closes once the answer is out, and the body
    the client may still be sending is never read.
    """
    ctx.metrics.rejected[reason] += 1
    log.warning("refused %s %s: bad %s", handler.request.method, handler.request.path, reason)
    handler.set_status(status)
    handler.set_header("Content-Type", "text/plain; charset=utf-8")
    # The connection ends with this answer: a client that keeps connections alive must not
    # send its next request on it (it would meet a reset).
    handler.set_header("Connection", "close")
    handler.finish(REFUSALS[reason] + "\n")


def admit(handler: web.RequestHandler, ctx: Context) -> None:
    """The request passed its guard: its connection no longer counts as a stranger's."""
    connection = handler.request.connection
    if isinstance(connection, http1connection.HTTP1Connection):
        ctx.gate.admitted(connection.stream)


def guard(handler: web.RequestHandler, ctx: Context) -> bool:
    """Refuse the request (403) unless Host, proxy and token are right; return whether it may
    go on. The request's user is then `handler.current_user` (identity.py)."""
    request = handler.request
    if not host_allowed(ctx, request):
        refuse(handler, ctx, "host")
        return False
    if ctx.login:
        return login_guard(handler, ctx)
    if ctx.team and not identity.peer_trusted(ctx.config, request.remote_ip):
        sent = ctx.config.proxy_user_header in request.headers
        log.warning(
            "%s from %s, not a trusted proxy%s",
            request.path, request.remote_ip, f" (it sent {ctx.config.proxy_user_header})" * sent
        )  # fmt: skip
        refuse(handler, ctx, "proxy")
        return False
    if not token_ok(ctx, presented_token(handler, ctx)):
        refuse(handler, ctx, "token")
        return False
    try:
        handler.current_user = (
            identity.proxy_user(ctx.config, request) if ctx.team else identity.OWNER
        )
    except identity.Refusal as exc:
        log.warning("%s from %s: %s", request.path, request.remote_ip, exc.detail)
        refuse(handler, ctx, exc.reason)
        return False
    admit(handler, ctx)
    return True


def login_guard(handler: web.RequestHandler, ctx: Context) -> bool:
    """`--auth pam|oidc`: the user of a live login cookie; a page without one is sent to the
    login page, anything else gets 401. A state-changing request needs the login's CSRF
    token, except on routes that read it from their form body (`csrf_in_body`)."""
    request = handler.request
    login = ctx.logins.lookup(login_cookie(handler, ctx))
    if login is None:
        if getattr(handler, "login_page", False) and request.method in SAFE_METHODS:
            ctx.metrics.rejected["login"] += 1
            # Answered from prepare, like a refusal: the server hangs up after it.
            handler.set_header("Connection", "close")
            handler.redirect(ctx.config.base_path + "login?" + urlencode({"next": request.uri}))
        else:
            refuse(handler, ctx, "login", 401)
        return False
    if (
        request.method not in SAFE_METHODS
        and not getattr(handler, "csrf_in_body", False)
        and not check_csrf(handler, ctx)
    ):
        refuse(handler, ctx, "csrf")
        return False
    handler.current_user = login.user
    handler.login = login  # type: ignore[attr-defined]  # logout closes this login's sockets
    admit(handler, ctx)
    return True


@dataclass(frozen=True)
class LinkCookie:
    """A credential that comes in a link's query (`?token=`, `?share=`) and lives on in a
    cookie, so that it leaves the address bar, the history and the Referer."""

    param: str
    cookie: str | None  # None: nothing to keep (--no-auth)
    path: str
    samesite: Literal["Strict", "Lax"]
    refusal: str  # the REFUSALS reason for a wrong one


def owner_link(ctx: Context) -> LinkCookie:
    """The URL the server prints: `?token=`, kept in a strict cookie for the base path."""
    cookie = None if ctx.token is None else ctx.cookie_name
    return LinkCookie("token", cookie, ctx.config.base_path, "Strict", "token")


def swap_link_for_cookie(
    handler: web.RequestHandler, ctx: Context, link: LinkCookie, valid: Callable[[str], bool]
) -> bool:
    """Refuse the link's credential, or set its cookie and redirect to the address without it.

    False when the query has none (the route's own guard then decides).
    """
    value = handler.get_query_argument(link.param, None)
    if value is None:
        return False
    if not host_allowed(ctx, handler.request):
        refuse(handler, ctx, "host")
    elif not valid(value):
        refuse(handler, ctx, link.refusal)
    else:
        admit(handler, ctx)
        if link.cookie is not None:
            handler.set_cookie(
                link.cookie,
                quote(value, safe=""),  # a cookie holds only ASCII, and a token may not be
                httponly=True,
                samesite=link.samesite,
                secure=ctx.config.certfile is not None,
                path=link.path,
            )
        rest = [
            (k, v.decode("utf-8", "replace"))
            for k, values in handler.request.query_arguments.items()
            if k != link.param
            for v in values
        ]
        handler.redirect(handler.request.path + (f"?{urlencode(rest)}" if rest else ""))
    return True
