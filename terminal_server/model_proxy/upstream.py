"""One request to the model server, its answer handed on chunk by chunk as it arrives.

Tornado's HTTP/1.1 connection used as a client directly (not AsyncHTTPClient): the caller
holds the connection, so a client that goes away closes it at once, and the model server
stops generating, even while it has sent nothing yet. The answer's chunks go to `on_chunk`;
when that returns an awaitable (the client's socket is full), reading waits for it, so a
client that does not read holds the model server back instead of filling this server's
memory.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from tornado import http1connection, httputil, iostream, tcpclient

from mixvllm_common.urls import api_base

CONNECT_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 1 << 40  # an answer streams through: bounded by time, not size

OnStart = Callable[[int, httputil.HTTPHeaders], None]
OnChunk = Callable[[bytes], Awaitable[None] | None]


class UpstreamError(Exception):
    """The model server could not be reached or answered nothing (the message: one line)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    prefix: str  # the API base's path: "/v1"
    api_key: str | None

    @classmethod
    def from_url(cls, url: str, api_key: str | None) -> Target:
        parts = urlsplit(api_base(url))
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname or "localhost", port, parts.path, api_key)

    @property
    def root(self) -> str:
        """The model server's root path, where /props and /tokenize live (`prefix` less /v1)."""
        return self.prefix.removesuffix("/v1")

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _Delegate(httputil.HTTPMessageDelegate):
    def __init__(self, on_start: OnStart, on_chunk: OnChunk) -> None:
        self.on_start = on_start
        self.on_chunk = on_chunk
        self.started = False
        self.finished = False

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        self.started = True
        self.on_start(start_line.code, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.on_chunk(chunk)

    def finish(self) -> None:
        self.finished = True


class Exchange:
    """One request and its answer; `close()` (from any callback) ends both at once."""

    def __init__(self, target: Target, idle_timeout: float) -> None:
        self.target = target
        self.idle_timeout = idle_timeout
        self.timed_out = False
        self._stream: iostream.IOStream | None = None
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None

    async def run(
        self, method: str, path: str, body: bytes | None, on_start: OnStart, on_chunk: OnChunk
    ) -> bool:
        """Send the request; True if the whole answer came, False if it was cut or closed.

        Raises UpstreamError if the model server could not be reached at all."""
        target = self.target
        try:
            self._stream = await tcpclient.TCPClient().connect(
                target.host, target.port, timeout=CONNECT_TIMEOUT_S,
                ssl_options=ssl.create_default_context() if target.scheme == "https" else None,
            )  # fmt: skip
        except (TimeoutError, OSError, iostream.StreamClosedError, ssl.SSLError) as exc:
            cause = getattr(exc, "real_error", None) or exc
            why = getattr(cause, "strerror", None) or type(cause).__name__
            raise UpstreamError(
                f"cannot reach the model server at {target.netloc} ({why})"
            ) from None
        if self._closed:  # the client left while we connected
            self._stream.close()
            return False
        params = http1connection.HTTP1ConnectionParameters(
            no_keep_alive=True, max_header_size=MAX_HEADER_BYTES, max_body_size=MAX_ANSWER_BYTES
        )
        conn = http1connection.HTTP1Connection(self._stream, True, params)
        headers = httputil.HTTPHeaders({"Host": target.netloc, "Accept": "*/*"})
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        if body is not None:
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(body))
        delegate = _Delegate(on_start, self._watched(on_chunk))
        self._arm()
        try:
            conn.write_headers(httputil.RequestStartLine(method, path, "HTTP/1.1"), headers)
            if body:
                conn.write(body)
            conn.finish()
            await conn.read_response(delegate)
        except iostream.StreamClosedError:
            pass
        finally:
            self._disarm()
            self._stream.close()
        if not delegate.started and not self._closed:
            why = "timed out" if self.timed_out else "closed the connection"
            raise UpstreamError(f"the model server {why} before answering")
        return delegate.finished and not self._closed

    def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.close()

    def _watched(self, on_chunk: OnChunk) -> OnChunk:
        def chunk(data: bytes) -> Awaitable[None] | None:
            self._arm()
            return on_chunk(data)

        return chunk

    def _arm(self) -> None:
        """(Re)start the idle deadline: the answer must move at least every idle_timeout."""
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self.timed_out = True
        if self._stream is not None:
            self._stream.close()
