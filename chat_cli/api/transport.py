"""HTTP to the model server with the stdlib's http.client.

The openai SDK cost ~0.6 s of imports per run and hid the socket; chat already parses the SSE
stream itself, so what remains is one request per fresh connection (no pooled connection the
server may have dropped), whose socket a Cancel can hang up and whose timeouts mean what the
user set: a deadline for the first byte (and for a whole non-streamed answer), then a stall
timeout between the bytes of a stream.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

CONNECT_TIMEOUT_S = 10.0
BODY_LIMIT = 1 << 20  # an error page or a whole answer; more is not read
TransportError = (OSError, http.client.HTTPException)


class Timeout(Exception):
    """No byte within the time allowed; `started` says whether any body byte had come."""

    def __init__(self, started: bool) -> None:
        super().__init__("timed out")
        self.started = started


class Connection(http.client.HTTPConnection):
    """Keeps its socket for an answer with `Connection: close`: http.client lets go of it
    then, and with it of the only way to set the stall timeout on it or hang it up (Cancel).
    Closing the connection closes that answer too."""

    _kept: http.client.HTTPResponse | None = None

    def getresponse(self) -> http.client.HTTPResponse:
        sock = self.sock
        response = super().getresponse()
        if self.sock is None and sock is not None:
            self.sock, self._kept = sock, response
        return response

    def close(self) -> None:
        kept, self._kept = self._kept, None
        super().close()
        if kept is not None:
            kept.close()


class TLSConnection(http.client.HTTPSConnection, Connection):
    pass


@dataclass(frozen=True)
class Target:
    https: bool
    host: str
    port: int | None
    prefix: str  # the API base's path, e.g. /v1

    @classmethod
    def parse(cls, base_url: str) -> Target:
        scheme, _, rest = base_url.partition("://")
        netloc, _, path = rest.partition("/")
        host, port = netloc.rsplit("@", 1)[-1], None
        if host.startswith("["):
            host, _, tail = host[1:].partition("]")
            port = int(tail[1:]) if tail.startswith(":") else None
        elif ":" in host:
            host, _, digits = host.rpartition(":")
            port = int(digits)
        return cls(scheme.lower() == "https", host, port, "/" + path.strip("/"))

    def path(self, endpoint: str) -> str:
        """The request target: a plain-HTTP proxy takes the absolute URL."""
        path = self.prefix.rstrip("/") + endpoint
        if self.https or self.proxy() is None:
            return path
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}{port}{path}"

    def proxy(self) -> tuple[str, int | None] | None:
        """The $http_proxy / $https_proxy that applies (urllib's rules, $no_proxy included)."""
        if not any(k.lower() in ("http_proxy", "https_proxy", "all_proxy") for k in os.environ):
            return None
        import urllib.request  # noqa: PLC0415 (only with a proxy set: 20 ms of imports)

        url = urllib.request.getproxies().get("https" if self.https else "http")
        if not url or urllib.request.proxy_bypass(self.host):
            return None
        proxy = Target.parse(url if "://" in url else "http://" + url)
        return proxy.host, proxy.port

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """A connected HTTP(S) connection; raises OSError when the server cannot be reached."""
        conn: http.client.HTTPConnection
        proxy = self.proxy()
        host, port = proxy or (self.host, self.port)
        if self.https:
            conn = TLSConnection(host, port, timeout=timeout)
            if proxy:
                conn.set_tunnel(self.host, self.port)
        else:
            conn = Connection(host, port, timeout=timeout)
        try:
            conn.connect()
        except BaseException:
            conn.close()
            raise
        return conn


def headers(api_key: str | None, body: bool) -> dict[str, str]:
    out = {"Accept": "application/json, text/event-stream", "User-Agent": "mixvllm-chat"}
    if body:
        out["Content-Type"] = "application/json"
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def read_body(
    response: http.client.HTTPResponse, sock: socket.socket | None, deadline: float
) -> bytes:
    """The whole body (up to BODY_LIMIT), by the deadline; raises Timeout after it."""
    parts: list[bytes] = []
    size = 0
    while size < BODY_LIMIT:
        if sock is not None:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = response.read1(BODY_LIMIT - size)
        except TimeoutError as err:
            raise Timeout(started=size > 0) from err
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)


class Lines:
    """The lines of a streamed body, as text: no byte for `first_wait` seconds before the
    first one, or for `stall` seconds between two, raises Timeout."""

    def __init__(
        self,
        response: http.client.HTTPResponse,
        sock: socket.socket | None,
        *,
        first_wait: float,
        stall: float,
    ) -> None:
        self.response = response
        self.sock = sock
        self.first_wait = first_wait
        self.stall = stall
        self.received = 0  # body bytes

    def __iter__(self) -> Iterator[str]:
        sock = self.sock
        if sock is not None:
            sock.settimeout(self.first_wait)
        rest = b""
        while True:
            try:
                data = self.response.read1(65536)
            except TimeoutError as err:
                raise Timeout(started=self.received > 0) from err
            if not data:
                break
            if not self.received and sock is not None:
                sock.settimeout(self.stall)
            self.received += len(data)
            # A lone \r at the end may be half of a \r\n: keep it for the next read.
            lines = (rest + data).splitlines(keepends=True)
            rest = lines.pop() if not lines[-1].endswith(b"\n") else b""
            for line in lines:
                yield line.rstrip(b"\r\n").decode("utf-8", "replace")
        if rest:
            yield rest.rstrip(b"\r\n").decode("utf-8", "replace")


class Cancel:
    """Stops a request from another thread: a flag the request checks, and a hang-up of its
    socket, which wakes a read blocked on it (closing it would not)."""

    def __init__(self) -> None:
        self.cancelled = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socket = sock
            if self.cancelled:
                _hang_up(sock)

    def detach(self) -> None:
        with self._lock:
            self._socket = None

    def cancel(self) -> bool:
        """Stop the request; True if a read under way was woken (the request ends soon)."""
        with self._lock:
            self.cancelled = True
            if self._socket is None:
                return False
            _hang_up(self._socket)
            return True


def _hang_up(sock: socket.socket) -> None:
    # The plain socket's shutdown, also under TLS: the reader thread still holds the TLS state.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
