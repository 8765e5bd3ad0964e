"""Share links over HTTP: the owner's share API, and the view-only page, assets and socket.

Everything under `view/` answers only to a live share token (never the server's token), and
the server's routes never accept a share token. A viewer's socket reads one session's output;
stdin and set_size from it close it with CLOSE_VIEW_ONLY, and it never takes the session over.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from tornado import web

from . import identity, processes, protocol
from .auth import LinkCookie, admit, guard, host_allowed, refuse, same_origin, swap_link_for_cookie
from .context import Context
from .handlers import GuardedHandler, GuardedStaticHandler, TermSocket
from .shares import MAX_VIEWERS, Share, ShareRegistry
from .terminals import Session

log = logging.getLogger("mixvllm.terminal")

VIEW_PATH = "view/"


def make_registry(window: int) -> ShareRegistry:
    return ShareRegistry(window, tell_owner)


def share_state(share: Share | None) -> dict[str, Any]:
    if share is None or share.ended:
        return {"url": None, "viewers": 0}
    # Relative to the base path, as the page is; the token is what the owner hands out.
    return {"url": f"{VIEW_PATH}?share={share.token}", "viewers": share.viewers}


def tell_owner(share: Share) -> None:
    """Push the share's state (link, viewer count) to the session's owner, if attached."""
    owner = share.session.client
    if isinstance(owner, TermSocket) and not isinstance(owner, ViewSocket):
        owner.write_message(protocol.encode(protocol.SHARE, share_state(share)))


def cookie_name(ctx: Context) -> str:
    return f"mixvllm_share_{ctx.config.public_port}"


def view_link(ctx: Context) -> LinkCookie:
    # Lax: a share link is clicked in a chat or a mail (a cross-site navigation), and the view
    # has nothing a forged request could change.
    return LinkCookie("share", cookie_name(ctx), ctx.config.base_path + VIEW_PATH, "Lax", "share")


def share_guard(handler: web.RequestHandler, ctx: Context) -> Share | None:
    """The guard for `view/`: Host, then a live share token in the share cookie."""
    if not host_allowed(ctx, handler.request):
        refuse(handler, ctx, "host")
        return None
    proxied = ctx.config.auth == "proxy"
    if proxied and not identity.peer_trusted(ctx.config, handler.request.remote_ip):
        refuse(handler, ctx, "proxy")  # behind a proxy everyone comes through it
        return None
    share = ctx.shares.find(handler.get_cookie(cookie_name(ctx)))
    if share is None:
        refuse(handler, ctx, "share")
    else:
        admit(handler, ctx)
    return share


class ShareApiHandler(GuardedHandler):
    """`api/share?session=ID`: GET the state, POST to share (idempotent), DELETE to revoke."""

    max_body_bytes = 1024  # it reads none; a client may send an empty JSON object

    def authorized(self) -> bool:
        if not guard(self, self.ctx):
            return False
        # The owner cookie is SameSite=Strict already; a foreign Origin is refused as well.
        if self.request.method != "GET" and not same_origin(self.ctx, self.request):
            refuse(self, self.ctx, "origin")
            return False
        return True

    def _session(self) -> Session:
        session = self.own_session()
        if session is None:
            raise web.HTTPError(404)
        return session

    def _answer(self, share: Share | None) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(share_state(share)))

    def get(self) -> None:
        self._answer(self.ctx.shares.of(self._session()))

    def post(self) -> None:
        session = self._session()
        shared = self.ctx.shares.of(session)
        share = self.ctx.shares.create(session)
        log.info("session %s shared read-only", session.id)
        if share is not shared:  # POST is idempotent: a second one creates nothing
            self.ctx.audit.record("share_created", self.current_user, session=session.id)
        self._answer(share)

    def delete(self) -> None:
        session = self._session()
        share = self.ctx.shares.of(session)
        if share is not None and not share.ended:
            share.revoke()
            log.info("session %s: share revoked", session.id)
            self.ctx.audit.record("share_revoked", self.current_user, session=session.id)
        self.set_status(204)
        self.finish()


class ViewPageHandler(GuardedHandler):
    """The page, view-only: `view/?share=TOKEN` swaps the token for a cookie, like the owner's."""

    def authorized(self) -> bool:
        def valid(token: str) -> bool:
            return self.ctx.shares.find(token) is not None

        if swap_link_for_cookie(self, self.ctx, view_link(self.ctx), valid):
            return False
        return share_guard(self, self.ctx) is not None

    def get(self) -> None:
        page = (self.ctx.static_dir / "index.html").read_bytes()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page.replace(b"<body>", b'<body data-role="viewer">', 1))


class ViewStaticHandler(GuardedStaticHandler):
    def authorized(self) -> bool:
        return share_guard(self, self.ctx) is not None


class ViewSocket(TermSocket):
    """A viewer's socket: output of one session, with its own flow control; no input."""

    share: Share | None = None

    def credentials_ok(self) -> bool:
        self.share = share_guard(self, self.ctx)
        return self.share is not None

    async def open(self) -> None:
        self.peer = self.request.remote_ip or "?"
        self.binary = self.get_query_argument("binary", "0") == "1"
        self.ctx.sockets.add(self)
        share = self.share
        if share is None or share.ended:
            self._fail(protocol.CLOSE_SHARE_ENDED, "this share has ended")
            return
        if share.viewers >= MAX_VIEWERS:
            self._fail(protocol.CLOSE_TRY_LATER, f"this share has {MAX_VIEWERS} viewers already")
            return
        try:
            rows, cols = processes.get_winsize(share.session.fd)
        except OSError:  # the session is closing: its end reaches the viewer right after
            rows, cols = 24, 80
        self._frame_sizes = None  # the share's Viewer counts what this viewer acknowledges
        setup = {"view": True, "rows": rows, "cols": cols}
        self.write_message(protocol.encode(protocol.SETUP, setup))
        share.add(self)
        if self.ctx.config.ping_interval > 0:
            self._watchdog = asyncio.ensure_future(self._watch(self.ctx.config.ping_interval))

    def on_message(self, message: str | bytes) -> None:
        share = self.share
        if share is None:
            return
        try:
            msg = protocol.parse_client_message(message)
        except protocol.ProtocolError as exc:
            binary = isinstance(message, bytes)
            self._protocol_error(
                protocol.CLOSE_UNSUPPORTED if binary else protocol.CLOSE_INVALID, str(exc)
            )
            return
        if isinstance(msg, protocol.Ack):
            if not share.ack(self, msg.frames):
                self._protocol_error(protocol.CLOSE_INVALID, "ack for more frames than were sent")
            return
        self.ctx.metrics.protocol_errors += 1
        name = type(msg).__name__
        log.warning("closing viewer %s: it sent %s to a view-only share", self.peer, name)
        self._leave()
        self._fail(protocol.CLOSE_VIEW_ONLY, "view-only: this share takes no input or resize")

    def on_close(self) -> None:
        super().on_close()
        self._leave()

    def _leave(self) -> None:
        share, self.share = self.share, None
        if share is not None:
            share.remove(self)

    # -- shares.ViewerSink (send_output and session_ended come from TermSocket) ---------
    def resized(self, rows: int, cols: int) -> None:
        self.write_message(protocol.encode(protocol.SIZE, rows, cols))

    def share_ended(self) -> None:
        self.share = None
        self._fail(protocol.CLOSE_SHARE_ENDED, "the owner ended this share")


def share_routes(ctx: Context) -> list[Any]:
    base = ctx.config.base_path
    view = base + VIEW_PATH
    kw: dict[str, Any] = {"ctx": ctx}
    vendor = str(ctx.static_dir / "node_modules" / "@xterm")  # as app.VENDOR_SUBDIR
    return [
        (base + "api/share", ShareApiHandler, kw),
        (view, ViewPageHandler, kw),
        (base + "view", web.RedirectHandler, {"url": view}),
        (view + "ws", ViewSocket, kw),
        (
            view + r"static/(terminal\.js|terminal\.css)",
            ViewStaticHandler,
            {"path": str(ctx.static_dir), **kw},
        ),
        (view + r"vendor/(.*)", ViewStaticHandler, {"path": vendor, **kw}),
    ]
