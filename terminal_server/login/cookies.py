"""The login cookie, and the pre-login cookie that carries the login form's CSRF token.

Both are HttpOnly (no script reads them), SameSite=Lax (an OpenID provider's redirect back to
the callback is a cross-site navigation that must carry the pre-login cookie) and Secure when
users reach the server over https. Named per port, like the token cookie: two servers on one
host keep their own.
"""

from __future__ import annotations

from tornado import web

from ..context import Context


def login_cookie_name(ctx: Context) -> str:
    return f"mixvllm_login_{ctx.config.public_port}"


def prelogin_cookie_name(ctx: Context) -> str:
    return f"mixvllm_prelogin_{ctx.config.public_port}"


def _set(handler: web.RequestHandler, ctx: Context, name: str, value: str) -> None:
    handler.set_cookie(
        name,
        value,
        httponly=True,
        samesite="Lax",
        secure=ctx.config.secure_cookies,
        path=ctx.config.base_path,
    )


def _clear(handler: web.RequestHandler, ctx: Context, name: str) -> None:
    handler.clear_cookie(
        name, path=ctx.config.base_path, httponly=True, samesite="Lax",
        secure=ctx.config.secure_cookies,
    )  # fmt: skip


def set_login_cookie(handler: web.RequestHandler, ctx: Context, value: str) -> None:
    """A session cookie (no Max-Age): the store's expiry is the one that counts."""
    _set(handler, ctx, login_cookie_name(ctx), value)


def clear_login_cookie(handler: web.RequestHandler, ctx: Context) -> None:
    _clear(handler, ctx, login_cookie_name(ctx))


def set_prelogin_cookie(handler: web.RequestHandler, ctx: Context, value: str) -> None:
    _set(handler, ctx, prelogin_cookie_name(ctx), value)


def clear_prelogin_cookie(handler: web.RequestHandler, ctx: Context) -> None:
    _clear(handler, ctx, prelogin_cookie_name(ctx))


def login_cookie(handler: web.RequestHandler, ctx: Context) -> str | None:
    return handler.get_cookie(login_cookie_name(ctx))
