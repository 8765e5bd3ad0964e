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
import socket
import threading
from collections.abc import Iterator

# Shared with the launcher's health checks: one stdlib client for the same servers.
from mixvllm_common.http_client import (
    BODY_LIMIT,
    CONNECT_TIMEOUT_S,
    Target,
    Timeout,
    TransportError,
    read_body,
)

__all__ = [
    "BODY_LIMIT",
    "CONNECT_TIMEOUT_S",
    "Cancel",
    "Lines",
    "Target",
    "Timeout",
    "TransportError",
    "headers",
    "read_body",
]


def headers(api_key: str | None, body: bool) -> dict[str, str]:
    out = {"Accept": "application/json, text/event-stream", "User-Agent": "mixvllm-chat"}
    if body:
        out["Content-Type"] = "application/json"
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


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
