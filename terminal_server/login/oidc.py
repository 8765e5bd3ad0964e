"""`--auth oidc`'s routes: the login page with its "Sign in with …" button, `login/oidc` (off
to the provider) and `login/oidc/callback` (back, with a code to check). A login that passes
gets the same login cookie as a PAM one (logins.py); every outcome is in the audit log with
its reason, never with a token or code."""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import urlencode

from tornado.escape import xhtml_escape

from mixvllm_common.terminal_text import visible

from ..auth import admit
from ..context import Context
from .cookies import set_login_cookie
from .oidc_config import CALLBACK_PATH
from .oidc_errors import OidcError
from .oidc_flow import OidcFlow
from .routes import LoginHandler, safe_next
from .throttle import Throttle

log = logging.getLogger("mixvllm.terminal")

# What the user reads for each reason (OidcError.reason); the detail goes to the log only.
UNREACHABLE = "The sign-in provider cannot be reached: try again later."
MESSAGES = {
    "state": "This sign-in has expired or was already used: please sign in again.",
    "provider": "The sign-in was cancelled or refused at the provider.",
    "group": "Your account is not allowed on this server.",
    "user": "Your account's name cannot be used on this server.",
    "account": "This account may not use the terminal.",
    "discovery": UNREACHABLE,
    "jwks": UNREACHABLE,
    "exchange": "The sign-in provider did not confirm the sign-in: please sign in again.",
}
UNVERIFIED = "The sign-in provider's answer could not be verified: please sign in again."
BROWSER_COOKIE_S = 600  # as long as a pending login lives (oidc_pending.TTL_S)


def browser_cookie_name(ctx: Context) -> str:
    return f"mixvllm_oidc_{ctx.config.public_port}"


class OidcLoginPage(LoginHandler):
    """GET: the page with the provider's button (or, logged in already, where `next` says)."""

    def initialize(self, ctx: Context, flow: OidcFlow) -> None:  # type: ignore[override]
        super().initialize(ctx, Throttle(max_keys=1))
        self.flow = flow

    def render_form(self, status: int = 200, message: str = "", user: str = "") -> None:
        page = (self.ctx.static_dir / "login-oidc.html").read_text()
        start = "login/oidc?" + urlencode({"next": self._next()})
        fields = {"label": self.flow.settings.label, "start": start, "message": message}
        for name, value in fields.items():
            page = page.replace("{{" + name + "}}", xhtml_escape(value))
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page)

    async def post(self) -> None:
        self.set_status(405)
        self.finish()


class OidcStart(OidcLoginPage):
    """GET login/oidc?next=…: a new pending login, and the browser sent to the provider."""

    async def get(self) -> None:  # type: ignore[override]  # LoginHandler.get is not async
        browser = secrets.token_urlsafe(32)
        try:
            url = await self.flow.begin(self._next(), browser)
        except OidcError as exc:
            self._failed(exc, "")
            return
        self.set_cookie(
            browser_cookie_name(self.ctx), browser, httponly=True, samesite="Lax",
            secure=self.ctx.config.secure_cookies, path=self.ctx.config.base_path + "login/oidc",
            expires_days=BROWSER_COOKIE_S / 86400,
        )  # fmt: skip
        self.redirect(url)

    def _failed(self, exc: OidcError, user: str) -> None:
        address = self.request.remote_ip or "?"
        log.warning("login failed (oidc): %s from %s: %s", visible(user) or "''", address,
                    visible(exc.detail))  # fmt: skip
        self.ctx.metrics.rejected["oidc"] += 1
        reason = f"{exc.reason}: {exc.detail}"
        self.ctx.audit.record("login", user or None, method="oidc", result="failed",
                              address=address, reason=reason)  # fmt: skip
        self.render_form(403 if exc.reason not in ("discovery", "jwks") else 502,
                         MESSAGES.get(exc.reason, UNVERIFIED))  # fmt: skip


class OidcCallback(OidcStart):
    """GET login/oidc/callback?code=…&state=…: check it all, then log the user in."""

    def _next(self) -> str:
        return self.ctx.config.base_path  # the pending login holds where to go

    async def get(self) -> None:  # type: ignore[override]  # LoginHandler.get is not async
        name = browser_cookie_name(self.ctx)
        browser = self.get_cookie(name)
        self.clear_cookie(name, path=self.ctx.config.base_path + "login/oidc")
        args = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        user = None
        try:
            user = await self.flow.complete(args, browser)
            created = await self.flow.account(user)
        except OidcError as exc:
            self._failed(exc, user.name if user else "")
            return
        cookie = self.ctx.logins.start(user.name, "oidc", user.groups)
        set_login_cookie(self, self.ctx, cookie)
        admit(self, self.ctx)
        address = self.request.remote_ip or "?"
        log.info("login ok (oidc): %s from %s%s", user.name, address,
                 " (account made)" * created)  # fmt: skip
        fields: dict[str, Any] = {"method": "oidc", "result": "ok", "address": address}
        if created:
            fields["account"] = "created"
        self.ctx.audit.record("login", user.name, **fields)
        self.redirect(safe_next(self.ctx, user.next_path))


def oidc_routes(ctx: Context) -> list[Any]:
    """The routes for `--auth oidc`; they come before login_routes, whose `login` they
    replace (the button instead of the password form)."""
    settings = ctx.config.oidc
    if settings is None or ctx.config.public_url is None:
        return []
    flow = OidcFlow(
        settings,
        ctx.config.public_url + CALLBACK_PATH,
        min_uid=ctx.config.min_uid,
        allowed_users=ctx.config.allowed_users,
        allowed_groups=ctx.config.allowed_groups,
    )
    base, kw = ctx.config.base_path, {"ctx": ctx, "flow": flow}
    return [
        (base + "login", OidcLoginPage, kw),
        (base + "login/oidc", OidcStart, kw),
        (base + CALLBACK_PATH, OidcCallback, kw),
    ]
