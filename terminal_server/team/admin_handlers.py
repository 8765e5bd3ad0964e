"""The admin page and its API: `admin` (the page), `api/admin/state` (JSON: users, sessions,
usage), `api/admin/end?session=ID`, `api/admin/revoke?session=ID` and, with logins,
`api/admin/logout?user=NAME` (POST).

Admins only (admins.py): anyone else gets 403, and the refusal goes to the audit log, as does
every action. Actions reach any user's session, so they are looked up by id alone; they come
from the page's own origin only (a cross-site form cannot post them), and in login modes with
the login's CSRF token (the guard checks it, login/csrf.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tornado import web

from .. import protocol
from ..auth import guard, refuse, same_origin
from ..context import Context
from ..handlers import GuardedHandler, GuardedStaticHandler, serve_page, token_link_swapped
from ..terminals import SESSION_ID_RE, Session
from . import admin_view
from .admins import is_admin

log = logging.getLogger("mixvllm.terminal")


class _AdminOnly(web.RequestHandler):
    """The guard, then the admin check; a refusal is logged and audited."""

    ctx: Context

    def authorized(self) -> bool:
        if not guard(self, self.ctx):
            return False
        user = self.current_user
        if not is_admin(self.ctx.config, user, self.login_groups()):
            self.ctx.audit.record("admin_refused", user, path=self.request.path)
            refuse(self, self.ctx, "admin")
            return False
        if self.request.method not in ("GET", "HEAD") and not same_origin(self.ctx, self.request):
            refuse(self, self.ctx, "origin")
            return False
        return True

    def login_groups(self) -> tuple[str, ...]:
        """The groups the request's login brought (an OIDC claim); none without a login."""
        login = getattr(self, "login", None)  # the guard's, with --auth pam|oidc
        return tuple(login.groups) if login is not None else ()


class AdminPageHandler(_AdminOnly, GuardedHandler):
    login_page = True  # without a login (--auth pam|oidc): sent to the login page

    def authorized(self) -> bool:
        # Token mode: `admin?token=` is swapped for the owner's cookie, as on the terminal page.
        return not token_link_swapped(self, self.ctx) and super().authorized()

    def get(self) -> None:
        serve_page(self, self.ctx, "admin.html")


class AdminStaticHandler(_AdminOnly, GuardedStaticHandler):
    pass


class AdminStateHandler(_AdminOnly, GuardedHandler):
    def initialize(self, ctx: Context, scan: admin_view.ProcessScan) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.scan = scan

    async def get(self) -> None:
        ctx = self.ctx
        sessions = [
            (s, None if (share := ctx.shares.of(s)) is None else share.viewers)
            for s in list(ctx.manager.sessions.values())
            if not s.closed
        ]
        usage = await self.scan.usage(s.proc.pid for s, _ in sessions)
        # Behind a proxy there are no logins here: users with sessions are who is on.
        logged_in = ctx.logins.users() if ctx.login else {}
        tokens = ctx.usage.snapshot()  # model_proxy/usage.py: user -> UserUsage
        body = admin_view.build(sessions, usage, logged_in, tokens, self.current_user)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class AdminActionHandler(_AdminOnly, GuardedHandler):
    """POST `api/admin/<action>?session=ID` (or `?user=NAME` to log a user out)."""

    max_body_bytes = 4096  # none is read; room for a form's token

    def _session(self) -> Session:
        session_id = self.get_query_argument("session", "")
        session = self.ctx.manager.sessions.get(session_id)
        if not SESSION_ID_RE.match(session_id) or session is None or session.closed:
            raise web.HTTPError(404)
        return session

    async def post(self, action: str) -> None:
        if action == "logout":
            self._logout(self.get_query_argument("user", ""))
            return
        session = self._session()
        if action == "end":
            log.info("session %s of %s ended by admin %s", session.id, session.owner,
                     self.current_user)  # fmt: skip
            self.ctx.audit.record("admin_end_session", self.current_user, session=session.id,
                                  owner=session.owner)  # fmt: skip
            await session.close("admin")
        else:
            share = self.ctx.shares.of(session)
            if share is None:
                raise web.HTTPError(404)
            share.revoke()
            log.info("session %s: share revoked by admin %s", session.id, self.current_user)
            self.ctx.audit.record("admin_revoke_share", self.current_user, session=session.id,
                                  owner=session.owner)  # fmt: skip
        self.set_status(204)
        self.finish()

    def _logout(self, user: str) -> None:
        """End every login of `user` and close the tabs opened under them (their sessions
        stay, detached, until the idle timeout or an admin ends them)."""
        ended = self.ctx.logins.end_user(user) if self.ctx.login else 0
        if not ended:
            raise web.HTTPError(404)
        for sock in list(self.ctx.sockets):
            login = getattr(sock, "login", None)
            if login is not None and login.user == user:
                sock.close(protocol.CLOSE_POLICY, "logged out by an admin")
        log.info("%s logged out by admin %s (%d logins)", user, self.current_user, ended)
        self.ctx.audit.record("admin_logout", self.current_user, target=user, logins=ended)
        self.set_status(204)
        self.finish()


def admin_routes(ctx: Context) -> list[Any]:
    base = ctx.config.base_path
    kw: dict[str, Any] = {"ctx": ctx}
    return [
        (base + "admin", AdminPageHandler, kw),
        (base + "api/admin/state", AdminStateHandler, {"scan": admin_view.ProcessScan(), **kw}),
        (base + r"api/admin/(end|revoke|logout)", AdminActionHandler, kw),
        (
            base + r"static/(admin\.js|admin\.css)",
            AdminStaticHandler,
            {"path": str(ctx.static_dir), **kw},
        ),
    ]
