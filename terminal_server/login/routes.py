"""The login page (`login`: GET the form, POST it), `logout` (POST), and the page's assets.

The form is posted, not sent by script: it works without JavaScript, and the page's CSP
allows a form to post to this server only. The login answer never says whether the account
exists: one message for every refusal.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from tornado import httputil, web
from tornado.escape import xhtml_escape

from mixvllm_common.terminal_text import visible

from .. import protocol
from ..auth import admit, host_allowed, refuse
from ..context import Context
from ..handlers import CSP, GuardedHandler, GuardedStaticHandler
from .cookies import clear_login_cookie, clear_prelogin_cookie, login_cookie, set_login_cookie
from .csrf import check_csrf, csrf_token
from .logins import Login
from .pam import Busy, PamAuthenticator
from .throttle import Throttle

log = logging.getLogger("mixvllm.terminal")

LOGIN_CSP = CSP.replace("form-action 'none'", "form-action 'self'")
WRONG = "Wrong user name or password."
EXPIRED = "This form has expired: please log in again."
MAX_NAME_CHARS = 64


def safe_next(ctx: Context, value: str | None) -> str:
    """Where to go after login: a path under the base path of this server, else the page."""
    base = ctx.config.base_path
    if not value or any(ch in value for ch in "\\\r\n\t\x00") or not value.isprintable():
        return base
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or value.startswith("//") or not value.startswith(base):
        return base
    if parts.path.rstrip("/") in (base + "login", base + "logout"):
        return base
    return value


class LoginHandler(GuardedHandler):
    """GET: the form (or, logged in already, where `next` points). POST: check and log in."""

    max_body_bytes = 4096

    def initialize(  # type: ignore[override]
        self, ctx: Context, throttle: Throttle, pam: PamAuthenticator | None = None
    ) -> None:
        self.ctx = ctx
        self.throttle = throttle
        self.pam = pam
        self._body = bytearray()

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", LOGIN_CSP)

    def authorized(self) -> bool:
        # Anyone may see the form: only the Host check (DNS rebinding) applies.
        if not host_allowed(self.ctx, self.request):
            refuse(self, self.ctx, "host")
            return False
        return True

    def data_received(self, chunk: bytes) -> None:
        self._body += chunk  # bound_body bounds it

    def _next(self) -> str:
        return safe_next(self.ctx, self.get_argument("next", None))

    def render_form(self, status: int = 200, message: str = "", user: str = "") -> None:
        page = (self.ctx.static_dir / "login.html").read_text()
        fields = {
            "csrf": csrf_token(self, self.ctx),
            "next": self._next(),
            "message": message,
            "user": user,
            "method": self.ctx.config.auth,
        }
        for name, value in fields.items():
            page = page.replace("{{" + name + "}}", xhtml_escape(value))
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page)

    def get(self) -> None:
        if self.ctx.logins.lookup(login_cookie(self, self.ctx)) is not None:
            self.redirect(self._next())
            return
        self.render_form()

    async def post(self) -> None:
        httputil.parse_body_arguments(
            self.request.headers.get("Content-Type", ""), bytes(self._body),
            self.request.body_arguments, self.request.files, self.request.headers,
        )  # fmt: skip
        name = self.get_body_argument("user", "").strip()[:MAX_NAME_CHARS]
        password = self.get_body_argument("password", "", strip=False)
        address = self.request.remote_ip or "?"
        if not check_csrf(self, self.ctx):
            self.ctx.metrics.rejected["csrf"] += 1
            log.warning("login form from %s without a valid CSRF token", address)
            self.render_form(403, EXPIRED, name)
            return
        if self.pam is None:
            raise web.HTTPError(404)  # another method (oidc) has its own routes
        wait = self.throttle.retry_after(name, address)
        if wait > 0:
            self._audit(name, "throttled", address, f"{wait:.0f} s to wait")
            self.set_header("Retry-After", str(int(wait) + 1))
            message = f"Too many failed logins: try again in {int(wait) + 1} seconds."
            self.render_form(429, message, name)
            return
        self.throttle.attempt(name, address)  # a failure until it succeeds
        try:
            verdict = await self.pam.authenticate(name, password)
        except Busy:
            self.throttle.succeeded(name, address)  # not the user's failure
            self._audit(name, "busy", address, "too many logins under way")
            self.render_form(503, "The server is busy: try again in a moment.", name)
            return
        if not verdict.ok:
            self.throttle.failed(name, address)
            self._audit(name, "failed", address, verdict.detail)
            self.render_form(401, WRONG, name)
            return
        self.throttle.succeeded(name, address)
        cookie = self.ctx.logins.start(name, "pam", verdict.groups)
        set_login_cookie(self, self.ctx, cookie)
        clear_prelogin_cookie(self, self.ctx)
        admit(self, self.ctx)
        self._audit(name, "ok", address, "")
        self.redirect(self._next(), status=303)

    def _audit(self, name: str, result: str, address: str, detail: str) -> None:
        level = logging.INFO if result == "ok" else logging.WARNING
        log.log(level, "login %s: %s from %s%s", result, visible(name) or "''", address,
                f" ({visible(detail)})" if detail else "")  # fmt: skip
        fields: dict[str, str] = {"method": "pam", "result": result, "address": address}
        if detail:
            fields["reason"] = detail
        self.ctx.audit.record("login", name, **fields)


class LogoutHandler(GuardedHandler):
    """POST (with the CSRF token, as a header or a form field): end this login and clear its
    cookie. The user's sessions stay for their next login."""

    max_body_bytes = 1024
    csrf_in_body = True  # the guard leaves it to post(), once a form body is in

    def initialize(self, ctx: Context) -> None:
        super().initialize(ctx)
        self._body = bytearray()

    def data_received(self, chunk: bytes) -> None:
        self._body += chunk

    def post(self) -> None:
        httputil.parse_body_arguments(
            self.request.headers.get("Content-Type", ""), bytes(self._body),
            self.request.body_arguments, self.request.files, self.request.headers,
        )  # fmt: skip
        if not check_csrf(self, self.ctx):
            refuse(self, self.ctx, "csrf")
            return
        login = self.ctx.logins.end(login_cookie(self, self.ctx))
        clear_login_cookie(self, self.ctx)
        if login is not None:
            close_sockets(self.ctx, login)
            address = self.request.remote_ip or "?"
            log.info("logout: %s from %s", login.user, address)
            self.ctx.audit.record("logout", login.user, method=login.method, address=address)
        self.redirect(self.ctx.config.base_path + "login", status=303)


def close_sockets(ctx: Context, login: Login) -> None:
    """Close the terminal sockets opened under `login` (its sessions stay, detached)."""
    for sock in list(ctx.sockets):
        if getattr(sock, "login", None) is login:
            sock.close(protocol.CLOSE_POLICY, "logged out")


class LoginStaticHandler(GuardedStaticHandler):
    """The login page's own CSS and script: no login needed, only the Host check."""

    def authorized(self) -> bool:
        if not host_allowed(self.ctx, self.request):
            refuse(self, self.ctx, "host")
            return False
        return True


def login_routes(ctx: Context) -> list[Any]:
    if not ctx.login:
        return []
    base = ctx.config.base_path
    pam = PamAuthenticator(ctx.config) if ctx.config.auth == "pam" else None
    kw: dict[str, Any] = {"ctx": ctx}
    return [
        (base + "login", LoginHandler, {**kw, "pam": pam, "throttle": Throttle()}),
        (base + "logout", LogoutHandler, kw),
        (
            base + r"static/(login\.js|login\.css)",
            LoginStaticHandler,
            {"path": str(ctx.static_dir), **kw},
        ),
    ]
