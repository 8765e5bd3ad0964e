"""Who may use the server: the Host check (DNS rebinding) and the token, for every request."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from tornado import httputil, web

from .config import is_loopback_host

if TYPE_CHECKING:
    from .handlers import Context

log = logging.getLogger("mixvllm.terminal")


def host_allowed(ctx: Context, request: httputil.HTTPServerRequest) -> bool:
    if not ctx.config.is_loopback:
        return True
    host = request.host or ""
    hostname = urlparse(f"//{host}").hostname or ""
    return is_loopback_host(hostname)


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


def guard(handler: web.RequestHandler, ctx: Context) -> bool:
    """Refuse the request (403) unless Host and token are right; return whether it may go on."""
    reason = None
    if not host_allowed(ctx, handler.request):
        reason, text = "host", "Host not allowed: this server only answers to localhost names."
    elif not token_ok(ctx, presented_token(handler, ctx)):
        reason, text = "token", "Token required: open the URL printed when the server started."
    if reason is None:
        return True
    ctx.metrics.rejected[reason] += 1
    log.warning("refused %s %s: bad %s", handler.request.method, handler.request.path, reason)
    handler.set_status(403)
    handler.set_header("Content-Type", "text/plain; charset=utf-8")
    handler.finish(text + "\n")
    return False
