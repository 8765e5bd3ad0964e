"""HTTP and WebSocket handlers. Every request passes `auth.guard()`: Host, then the token,
as soon as its headers are in; its body (bounded per route) is read only after that."""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
import logging
import time
import traceback
from collections import deque
from types import TracebackType

from tornado import http1connection, web

from . import __version__, protocol
from .auth import (
    guard,
    origin_allowed,
    owner_link,
    refuse,
    same_origin,
    swap_link_for_cookie,
    token_ok,
)
from .context import Context
from .login.csrf import login_meta
from .metrics import Metrics
from .model_proxy.usage import metric_lines
from .processes import SessionStartError
from .session_user import SessionUserError
from .sessions import SessionLimitError
from .terminals import InputOverflowError, Session
from .wsupgrade import WebSocketHandler

log = logging.getLogger("mixvllm.terminal")

CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "font-src 'self'; style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
MAX_CHAT_ARG = 4096


def log_request(handler: web.RequestHandler, metrics: Metrics | None = None) -> None:
    """Access log without query strings (tokens never reach the logs); counts the status."""
    status = handler.get_status()
    if metrics is not None:
        metrics.count_response(status)
    level = logging.INFO if status < 400 else logging.WARNING
    ms = 1000.0 * handler.request.request_time()
    log.log(level, "%d %s %s %.1fms", status, handler.request.method, handler.request.path, ms)


def _security_headers(handler: web.RequestHandler) -> None:
    handler.set_header("Referrer-Policy", "no-referrer")
    handler.set_header("Content-Security-Policy", CSP)
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("X-Frame-Options", "DENY")
    handler.set_header("Cross-Origin-Opener-Policy", "same-origin")


@web.stream_request_body
class _Guarded(web.RequestHandler):
    """Security headers, the Host/token guard and token-free log lines for every handler.

    Bodies come as a stream, so `prepare` runs when the headers are in: a request it refuses
    has its connection closed and its body never read (gate.py).
    """

    ctx: Context
    max_body_bytes = 0  # this route's bound; routes that take a body say how much

    def set_default_headers(self) -> None:
        _security_headers(self)

    def _request_summary(self) -> str:
        # Tornado's default summary has the URI, whose query string may carry the token.
        return f"{self.request.method} {self.request.path}"

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Tornado's version logs the whole request and messages that quote the input (a token
        # with a bad byte, say). The access log has the status; a bug keeps its type and stack.
        if isinstance(value, web.HTTPError) or typ is None:
            return
        stack = "".join(traceback.format_tb(tb)).rstrip()
        log.error("%s in %s (message withheld)\n%s", typ.__name__, self._request_summary(), stack)

    def prepare(self) -> None:
        if self.authorized():
            self.bound_body()

    def authorized(self) -> bool:
        """Whether the request may go on; if not, it has been answered (auth.refuse)."""
        return guard(self, self.ctx)

    def bound_body(self) -> None:
        """Refuse (413) a body larger than the route's bound; Tornado enforces it as it reads
        a chunked one."""
        connection = self.request.connection
        if isinstance(connection, http1connection.HTTP1Connection):
            connection.set_max_body_size(self.max_body_bytes)
        length = self.request.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) > self.max_body_bytes:
            refuse(self, self.ctx, "body", 413)

    def data_received(self, chunk: bytes) -> None:
        pass  # no route reads a body: what is within its bound is dropped


class GuardedHandler(_Guarded):
    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx

    def own_session(self) -> Session | None:
        """The `?session=` the request's user owns; another user's is as good as none."""
        return self.ctx.manager.get(self.get_query_argument("session", None), self.current_user)

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")


def token_link_swapped(handler: web.RequestHandler, ctx: Context) -> bool:
    """A page's `?token=` is swapped for the owner's cookie and dropped from the address bar
    (not in the team modes: there the proxy or a login stands for it, users never see it)."""
    valid = functools.partial(token_ok, ctx)
    return not ctx.team and swap_link_for_cookie(handler, ctx, owner_link(ctx), valid)


def serve_page(handler: web.RequestHandler, ctx: Context, name: str) -> None:
    """An HTML page of static/, with the login's CSRF token and user (pam|oidc) in its head."""
    handler.set_header("Content-Type", "text/html; charset=utf-8")
    page = (ctx.static_dir / name).read_bytes()
    if ctx.login:
        page = page.replace(b"</head>", login_meta(handler, ctx) + b"</head>", 1)
    handler.finish(page)


class PageHandler(GuardedHandler):
    login_page = True  # without a login (--auth pam|oidc): sent to the login page

    def authorized(self) -> bool:
        return not token_link_swapped(self, self.ctx) and super().authorized()

    def get(self) -> None:
        serve_page(self, self.ctx, "index.html")


class GuardedStaticHandler(_Guarded, web.StaticFileHandler):
    def initialize(
        self,
        path: str,
        default_filename: str | None = None,
        allowed_symlink_directory: str | list[str] | None = None,
        ctx: Context | None = None,
    ) -> None:
        super().initialize(path, default_filename, allowed_symlink_directory)
        assert ctx is not None
        self.ctx = ctx

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        if "\x00" in absolute_path:  # os.path would raise ValueError: a 500
            raise web.HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)


class HealthHandler(GuardedHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        body = {
            "status": "ok",
            "sessions": len(self.ctx.manager.sessions),
            "clients": self.ctx.manager.clients(),
            "max_sessions": self.ctx.config.max_sessions,
            "version": __version__,
        }
        self.finish(json.dumps(body))


class ModelStatusHandler(GuardedHandler):
    """The latest model-server snapshot for the status bar; never waits on the model server."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.ctx.model_status.status.as_json(time.time())))


class MetricsHandler(GuardedHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        text = self.ctx.metrics.render(
            sessions=len(self.ctx.manager.sessions),
            clients=self.ctx.manager.clients(),
            version=__version__,
            max_sessions=self.ctx.config.max_sessions,
        )
        if self.ctx.team:  # a `user` label only where there are users
            text += "\n".join(metric_lines(self.ctx.usage.snapshot())) + "\n"
        self.finish(text)


class TermSocket(_Guarded, WebSocketHandler):
    """One browser tab attached to one session."""

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx
        self.session: Session | None = None
        self.peer = "?"
        self.binary = False  # stdout as raw UTF-8 binary frames instead of ["stdout", text]
        self.ack_every = 0  # > 0: the client acks by bytes, at least this many at a time
        self.echo_sizes = False  # answer each set_size with ["size", rows, cols]
        self._frame_sizes: deque[int] | None = deque()  # per-frame acks: sizes of unacked frames
        self._decoder: codecs.IncrementalDecoder | None = None  # text mode only
        self._ponged = False
        self._watchdog: asyncio.Task[None] | None = None

    def max_buffered(self) -> int:
        # Flow control keeps a reading client within a window (plus a reattach's replay); text
        # mode's JSON escapes can grow each byte up to sixfold. Past this, it is not reading.
        cfg = self.ctx.config
        return 6 * (cfg.scrollback_bytes + cfg.flow_window) + 1024 * 1024

    def authorized(self) -> bool:
        # The origin as well, while only the headers are in (wsupgrade asks again, later).
        if not self.credentials_ok():
            return False
        if not same_origin(self.ctx, self.request):
            refuse(self, self.ctx, "origin")
            return False
        return True

    def credentials_ok(self) -> bool:
        return guard(self, self.ctx)

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(self.ctx, self.request, origin)

    def _chat_args(self) -> list[str]:
        args: list[str] = []
        for name in ("model", "system"):
            value = self.get_query_argument(name, None)
            if value and len(value) <= MAX_CHAT_ARG and "\x00" not in value:
                args += [f"--{name}", value]
        return args

    def _size(self) -> tuple[int, int]:
        try:
            rows = int(self.get_query_argument("rows", "24") or 24)
            cols = int(self.get_query_argument("cols", "80") or 80)
        except ValueError:
            return 24, 80
        if 1 <= rows <= protocol.MAX_DIMENSION and 1 <= cols <= protocol.MAX_DIMENSION:
            return rows, cols
        return 24, 80

    async def open(self) -> None:
        self.peer = self.request.remote_ip or "?"
        self.binary = self.get_query_argument(protocol.BINARY_PARAM, "0") == "1"
        if not self.binary:
            self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        elif self.get_query_argument(protocol.ACK_PARAM, "") == protocol.ACK_MODE_BYTES:
            # Well below the window: what a client holds back never stalls the session.
            self.ack_every = max(1, self.ctx.config.flow_window // 4)
            self._frame_sizes = None
        self.echo_sizes = self.get_query_argument(protocol.SIZES_PARAM, "0") == "1"
        self.ctx.sockets.add(self)
        user = self.current_user
        session = self.ctx.manager.get(self.get_query_argument("session", None), user)
        if session is not None and self.get_query_argument("restart", "0") == "1":
            # "Restart": end the session (chat, shell and all) and start a fresh one.
            await session.close("restart")
            session = None
        reattached = session is not None
        if session is None:
            rows, cols = self._size()
            try:
                session = await self.ctx.manager.create(self._chat_args(), rows, cols, user)
            except SessionLimitError as exc:
                self.ctx.metrics.rejected["session_limit"] += 1
                log.warning("refused a new session from %s: %s", self.peer, exc)
                self._fail(protocol.CLOSE_TRY_LATER, str(exc))
                return
            except SessionUserError as exc:
                log.warning("refused a new session from %s: %s", self.peer, exc)
                self._fail(protocol.CLOSE_POLICY, "no Unix account on this server may run it")
                return
            except SessionStartError as exc:
                log.error("%s", exc)
                self._fail(1011, str(exc))
                return
        self.session = session
        setup: dict[str, object] = {"session": session.id, "reattached": reattached}
        if self.ack_every:
            setup["ack_bytes"] = self.ack_every
        if self.echo_sizes:
            setup["sizes"] = True
        self.write_message(protocol.encode(protocol.SETUP, setup))
        old = session.attach(self)
        if isinstance(old, TermSocket):
            old.session = None
            old._fail(protocol.CLOSE_TAKEN_OVER, "this session was opened in another tab")
        if self.ctx.config.ping_interval > 0:
            self._watchdog = asyncio.ensure_future(self._watch(self.ctx.config.ping_interval))

    async def _watch(self, interval: float) -> None:
        """Drop a tab that answers no ping (asleep, frozen, offline); its session stays."""
        while True:
            self._ponged = False
            self.ping()
            await asyncio.sleep(interval)
            if not self._ponged:
                break
        log.info("client %s answered no ping within %g s: detached", self.peer, interval)
        if self.session is not None:
            self.session.detach(self)
            self.session = None
        self.close(protocol.CLOSE_NO_PONG, "no answer to ping")

    def on_pong(self, data: bytes) -> None:
        self._ponged = True

    def _fail(self, code: int, message: str) -> None:
        self.write_message(protocol.encode(protocol.ERROR, message))
        self.close(code, message[:120])

    def on_message(self, message: str | bytes) -> None:
        session = self.session
        if session is None:
            return
        try:
            msg = protocol.parse_client_message(message)
        except protocol.ProtocolError as exc:
            self._protocol_error(
                protocol.CLOSE_UNSUPPORTED
                if isinstance(message, bytes)
                else protocol.CLOSE_INVALID,
                str(exc),
            )
            return
        if isinstance(msg, protocol.Stdin):
            try:
                session.write(msg.data)
            except InputOverflowError as exc:
                self._protocol_error(protocol.CLOSE_POLICY, str(exc))
        elif isinstance(msg, protocol.SetSize):
            session.resize(msg.rows, msg.cols)
            if self.echo_sizes:
                self.write_message(protocol.encode(protocol.SIZE, msg.rows, msg.cols))
        elif not self._ack(session, msg):
            self._protocol_error(protocol.CLOSE_INVALID, "ack for more than was sent")

    def _ack(self, session: Session, msg: protocol.Ack | protocol.AckBytes) -> bool:
        """Pass an ack to the session in bytes; False if it over-acks or is of the other mode."""
        sizes = self._frame_sizes
        if isinstance(msg, protocol.AckBytes):
            return sizes is None and session.ack(msg.count)
        if sizes is None or msg.frames > len(sizes):
            return False
        return session.ack(sum(sizes.popleft() for _ in range(msg.frames)))

    def _protocol_error(self, code: int, reason: str) -> None:
        self.ctx.metrics.protocol_errors += 1
        log.warning("closing WebSocket from %s: %s", self.peer, reason)
        if self.session is not None:
            self.session.detach(self)
            self.session = None
        self.close(code, reason[:120])

    def on_close(self) -> None:
        self.ctx.sockets.discard(self)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.session is not None:
            self.session.detach(self)
            self.session = None

    # -- terminals.Client ---------------------------------------------------------------
    def send_output(self, data: bytes) -> None:
        if self._frame_sizes is not None:
            self._frame_sizes.append(len(data))
        if self._decoder is None:
            self.write_message(data, binary=True)
        else:
            self.write_message(protocol.encode(protocol.STDOUT, self._decoder.decode(data)))

    def session_ended(self, exit_code: int | None) -> None:
        self.session = None
        self.write_message(protocol.encode(protocol.DISCONNECT, exit_code))
        self.close(protocol.CLOSE_SESSION_ENDED, "session ended")
