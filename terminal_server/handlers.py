"""HTTP and WebSocket handlers. Every request passes `auth.guard()`: Host, then the token."""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlencode, urlparse

from tornado import web

from . import __version__, protocol
from .auth import guard, host_allowed, token_ok
from .config import Config
from .metrics import Metrics
from .model_status import ModelStatusPoller
from .processes import SessionStartError
from .shares import ShareRegistry
from .terminals import InputOverflowError, Session, SessionLimitError, SessionManager
from .wsupgrade import WebSocketHandler

log = logging.getLogger("mixvllm.terminal")

CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "font-src 'self'; style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
MAX_CHAT_ARG = 4096


@dataclass
class Context:
    """Everything the handlers share; injected through `initialize`, never global."""

    config: Config
    manager: SessionManager
    metrics: Metrics
    token: str | None  # None only with --no-auth
    static_dir: Path
    model_status: ModelStatusPoller
    shares: ShareRegistry  # read-only share links (share_handlers.py)
    sockets: set[TermSocket] = field(default_factory=set)

    @property
    def cookie_name(self) -> str:
        # Two servers on one host (say two compose stacks) must not overwrite each other's.
        return f"mixvllm_token_{self.config.public_port}"

    @property
    def cookie_value(self) -> str:
        # Percent-encoded: a cookie holds only ASCII, and a token may not be.
        assert self.token is not None
        return quote(self.token, safe="")


def log_request(handler: web.RequestHandler) -> None:
    """Access log without query strings (tokens never reach the logs)."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING
    ms = 1000.0 * handler.request.request_time()
    log.log(level, "%d %s %s %.1fms", status, handler.request.method, handler.request.path, ms)


def _security_headers(handler: web.RequestHandler) -> None:
    handler.set_header("Referrer-Policy", "no-referrer")
    handler.set_header("Content-Security-Policy", CSP)
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("X-Frame-Options", "DENY")
    handler.set_header("Cross-Origin-Opener-Policy", "same-origin")


class _Guarded(web.RequestHandler):
    """Security headers, the Host/token guard and token-free log lines for every handler."""

    ctx: Context

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
        guard(self, self.ctx)


class GuardedHandler(_Guarded):
    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")


class PageHandler(GuardedHandler):
    def prepare(self) -> None:
        # A ?token= is swapped for a cookie and dropped from the address bar.
        token = self.get_query_argument("token", None)
        if token is None or not host_allowed(self.ctx, self.request):
            guard(self, self.ctx)
            return
        if not token_ok(self.ctx, token):
            self.ctx.metrics.rejected["token"] += 1
            log.warning("refused %s %s: bad token", self.request.method, self.request.path)
            self.set_status(403)
            self.finish("Wrong token.\n")
            return
        if self.ctx.token is not None:
            self.set_cookie(
                self.ctx.cookie_name,
                self.ctx.cookie_value,
                httponly=True,
                samesite="Strict",
                secure=self.ctx.config.certfile is not None,
                path=self.ctx.config.base_path,
            )
        rest = [
            (k, v.decode("utf-8", "replace"))
            for k, values in self.request.query_arguments.items()
            if k != "token"
            for v in values
        ]
        self.redirect(self.request.path + (f"?{urlencode(rest)}" if rest else ""))

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish((self.ctx.static_dir / "index.html").read_bytes())


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
        self.finish(
            self.ctx.metrics.render(
                sessions=len(self.ctx.manager.sessions),
                clients=self.ctx.manager.clients(),
                version=__version__,
            )
        )


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

    def check_origin(self, origin: str) -> bool:
        origin = origin.rstrip("/")
        ok = False
        if origin != "null":
            if origin in self.ctx.config.allowed_origins:
                ok = True
            else:
                parsed = urlparse(origin)
                # Same origin is scheme and host:port: https://host:P is not this http server.
                ok = parsed.scheme == self.request.protocol and (
                    parsed.netloc.lower() == (self.request.host or "").lower()
                )
        if not ok:
            self.ctx.metrics.rejected["origin"] += 1
            log.warning("refused WebSocket from origin %r", origin[:100])
        return ok

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
        session = self.ctx.manager.get(self.get_query_argument("session", None))
        if session is not None and self.get_query_argument("restart", "0") == "1":
            # "Restart": end the session (chat, shell and all) and start a fresh one.
            await session.close()
            session = None
        reattached = session is not None
        if session is None:
            rows, cols = self._size()
            try:
                session = self.ctx.manager.create(self._chat_args(), rows, cols)
            except SessionLimitError as exc:
                self.ctx.metrics.rejected["session_limit"] += 1
                log.warning("refused a new session from %s: %s", self.peer, exc)
                self._fail(protocol.CLOSE_TRY_LATER, str(exc))
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
