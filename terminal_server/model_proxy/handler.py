"""`{base}model/v1/…`: the OpenAI-compatible pass-through a team session's `chat` talks to,
and `{base}model/props` and `{base}model/tokenize` beside it, for the context and the count.

Its own guard, not auth.guard: sessions reach it directly on loopback, with neither the
proxy's header nor a login cookie, so the one credential is the user's model key
(credentials.py). Then the limits (limits.py), the body (bounded before it is read), and the
request goes on to the model server with the real key (upstream.py); the answer comes back
chunk by chunk, each written and flushed as it arrives, its usage counted on the way
(counting.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

from tornado import http1connection, httputil, iostream, web

from ..auth import admit, host_allowed, presented_token
from ..context import Context
from .counting import StreamCounter, WholeCounter, prompt_chars
from .limits import ModelLimits, Refusal
from .props import PropsFilter
from .upstream import Exchange, Target, UpstreamError

log = logging.getLogger("mixvllm.terminal")

# What sessions may ask under /v1: endpoint -> its method.
ENDPOINTS = {"models": "GET", "chat/completions": "POST", "completions": "POST"}
# And at the model server's root, what chat reads to know the context and count tokens:
# llama-server's /props (only its n_ctx passes, props.py) and vLLM's or llama-server's /tokenize.
ROOT_ENDPOINTS = {"props": "GET", "tokenize": "POST"}
# Counted and limited per user (quota, concurrency); the others only by the server-wide bound.
COUNTED = frozenset({"chat/completions", "completions"})
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # a long conversation; checked before the body is read
IDLE_TIMEOUT_S = 300.0  # the model server must send something at least this often
WRITE_TIMEOUT_S = 60.0  # a client that reads nothing for this long is dropped
CUT = "the model server's connection was cut mid-answer"
# The model server refused *our* key: nothing the user can fix, so not a 401 to them.
KEY_REFUSED = "the model server refused the terminal server's own key; tell the server's admin"


def model_routes(ctx: Context) -> list[Any]:
    """The pass-through's route in the team modes; token mode keeps the direct model URL."""
    if not ctx.team:
        return []
    kw = {
        "ctx": ctx,
        "limits": ModelLimits(ctx.config, ctx.usage, ctx.audit),
        "target": Target.from_url(ctx.config.model_server_url, ctx.config.model_api_key),
    }
    return [
        (ctx.config.base_path + r"model/v1/(.*)", ModelPassThrough, kw),
        (ctx.config.base_path + r"model/(props|tokenize)", ModelPassThrough, {**kw, "root": True}),
    ]


def error_body(message: str, code: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


@web.stream_request_body
class ModelPassThrough(web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST")
    write_timeout = WRITE_TIMEOUT_S

    def initialize(
        self, ctx: Context, limits: ModelLimits, target: Target, root: bool = False
    ) -> None:
        self.ctx = ctx
        self.limits = limits
        self.target = target
        # At the model server's root (ROOT_ENDPOINTS), not under its /v1 (ENDPOINTS).
        self.endpoints, self.prefix = (
            (ROOT_ENDPOINTS, target.root) if root else (ENDPOINTS, target.prefix)
        )
        self.user: str | None = None
        self.counted = False
        self._body: list[bytes] = []
        self._exchange: Exchange | None = None
        self._counter: StreamCounter | WholeCounter | PropsFilter | None = None
        self._running = False  # counted in the limits until released
        self._gone = False
        self._key_refused = False

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def _request_summary(self) -> str:
        return f"{self.request.method} {self.request.path}"

    def _error(self, status: int, message: str, code: str, *, close: bool = True) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        if close:  # answered before its body was read: this connection ends here
            self.set_header("Connection", "close")
        self.finish(
            error_body(message, code, "server_error" if status >= 500 else "invalid_request_error")
        )

    def prepare(self) -> None:
        endpoint, method = self.path_args[0], self.request.method
        if not host_allowed(self.ctx, self.request):
            self._error(403, "Host not allowed: this server only answers to localhost names.",
                        "host_not_allowed")  # fmt: skip
            return
        user = self.ctx.model_keys.user_for(presented_token(self, self.ctx))
        if user is None:
            self.ctx.metrics.rejected["model_key"] += 1
            log.warning("refused %s %s: bad model key", method, self.request.path)
            self._error(401, "Invalid API key: the terminal server's pass-through takes the "
                        "key a team session finds in VLLM_API_KEY.", "invalid_api_key")  # fmt: skip
            return
        shown = f"{self.prefix.removeprefix(self.target.root)}/{endpoint[:80]}"
        if self.endpoints.get(endpoint) is None:
            self._error(404, f"No such endpoint here: {shown}", "not_found")
            return
        if self.endpoints[endpoint] != method:
            self._error(405, f"{shown} takes {self.endpoints[endpoint]}", "method_not_allowed")
            return
        bound = MAX_REQUEST_BYTES if method == "POST" else 0
        connection = self.request.connection
        if isinstance(connection, http1connection.HTTP1Connection):
            connection.set_max_body_size(bound)
        length = self.request.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) > bound:
            self._error(413, f"Request body too large (at most {bound} bytes).", "body_too_large")
            return
        admit(self, self.ctx)
        self.user, self.counted = user, endpoint in COUNTED
        refusal = self.limits.admit(user, counted=self.counted)
        if refusal is not None:
            self._refuse(refusal)
            return
        self.limits.started(user, counted=self.counted)
        self._running = True

    def _refuse(self, refusal: Refusal) -> None:
        log.info("model request of %s refused: %s", self.user, refusal.code)
        self._error(refusal.status, refusal.message, refusal.code)

    def data_received(self, chunk: bytes) -> None:
        self._body.append(chunk)  # within the bound set in prepare

    async def get(self, endpoint: str) -> None:
        if endpoint == "props":
            self._counter = PropsFilter()
        await self._relay(endpoint, None)

    async def post(self, endpoint: str) -> None:
        try:
            request = json.loads(b"".join(self._body))
        except ValueError:
            request = None
        self._body.clear()
        if not isinstance(request, dict):
            self._error(400, "The request body is not a JSON object.", "invalid_json", close=False)
            return
        if endpoint not in COUNTED:
            await self._relay(endpoint, json.dumps(request).encode())
            return
        if request.get("stream") is True:
            options = request.get("stream_options")
            options = options if isinstance(options, dict) else {}
            asked = options.get("include_usage") is True
            request["stream_options"] = {**options, "include_usage": True}
            self._counter = StreamCounter(strip_usage=not asked, prompt_chars=prompt_chars(request))
        else:
            self._counter = WholeCounter()
        await self._relay(endpoint, json.dumps(request).encode())

    async def _relay(self, endpoint: str, body: bytes | None) -> None:
        if self._gone:  # left while its body came: nothing to ask for
            return
        exchange = self._exchange = Exchange(self.target, IDLE_TIMEOUT_S)
        try:
            whole = await exchange.run(
                self.request.method or "GET",
                f"{self.prefix}/{endpoint}",
                body,
                self._start,
                self._chunk,
            )
        except UpstreamError as exc:
            if not self._gone:
                self._error(502, str(exc), "upstream_unreachable", close=False)
            return
        finally:
            self._release()
        if self._gone:
            return
        if self._key_refused:
            self.finish(error_body(KEY_REFUSED, "upstream_key_refused", "server_error"))
            return
        counter = self._counter
        if counter is not None and (rest := counter.flush(whole=whole)):
            self.write(rest)
        if not whole and isinstance(counter, StreamCounter):
            # The client's parser gets a reason, not only a stream that stops.
            self.write(b"data: " + error_body(CUT, "upstream_cut", "server_error") + b"\n\n")
        self.finish()

    def _start(self, status: int, headers: httputil.HTTPHeaders) -> None:
        if status == 401:
            log.error("the model server refused this server's key (401): check VLLM_API_KEY")
            self._key_refused = True
            status = 502
        self.set_status(status)
        self.set_header("Content-Type", headers.get("Content-Type", "application/json"))
        if isinstance(self._counter, StreamCounter):
            self.set_header("X-Accel-Buffering", "no")  # nginx in between: do not buffer
            connection = self.request.connection
            if isinstance(connection, http1connection.HTTP1Connection):
                connection.stream.set_nodelay(True)  # a token is a small write: send it now
        if status >= 300:
            self._counter = None  # an error's body: passed on as it is, nothing to count

    def _chunk(self, data: bytes) -> Awaitable[None] | None:
        out = self._counter.feed(data) if self._counter is not None else data
        if not out or self._gone or self._key_refused:
            return None
        self.write(out)
        written = self.flush()
        if written.done():
            if written.exception() is not None and self._exchange is not None:
                self._exchange.close()
            return None
        return self._drain(written)

    async def _drain(self, written: asyncio.Future[None]) -> None:
        """Wait until the client took the chunk: the model server waits with us."""
        try:
            await asyncio.wait_for(written, self.write_timeout)
        except (TimeoutError, iostream.StreamClosedError):
            if self._exchange is not None:
                self._exchange.close()

    def _release(self) -> None:
        if not self._running or self.user is None:
            return
        self._running = False
        used = self._counter.used() if self._counter is not None else (0, 0)
        self.limits.finished(self.user, used if self.counted else None)

    def on_connection_close(self) -> None:
        self._gone = True
        if self._exchange is not None:
            self._exchange.close()  # the model server stops generating for nobody
        else:
            self._release()  # gone while its body was coming

    def on_finish(self) -> None:
        self._release()
