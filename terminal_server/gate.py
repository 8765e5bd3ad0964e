"""What a connection may hold before it shows a credential, and for how long.

Tornado reads a request's headers, then its body, then calls the handler; left as it is, a
stranger makes the server hold a 100 MiB body per request, or trickles headers for an hour.
Here, and in the handlers' `prepare` (handlers._Guarded):
- a request's headers must arrive within `header_timeout` and fit in `max_header_bytes`;
- every handler reads its body as a stream and refuses (Host, token, origin, size) as soon as
  the headers are in; a refused request's connection is closed, its body never read; a body
  the handler takes must fit its route's bound and arrive within `body_timeout`;
- at most `max_pending` connections that have not passed the guard are open at a time: one
  more hangs up the oldest. Together they hold at most about max_pending x (max_header_bytes +
  one read chunk), and a browser, whose request arrives at once, is not the one dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from tornado import httpserver, iostream, web

from .metrics import Metrics

READ_CHUNK = 16 * 1024  # what one read of a connection takes from the kernel


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 64 * 1024  # a browser's cookies for localhost, from every app
    header_timeout: float = 10.0  # also how long a kept-alive connection may sit idle
    body_timeout: float = 10.0
    max_body_bytes: int = 64 * 1024  # any route's; each route has its own, smaller one
    max_pending: int = 32  # connections that have not authenticated yet


class Gate:
    """The connections that have not passed the guard yet, oldest first; at most `max_pending`."""

    def __init__(self, limits: Limits | None = None, metrics: Metrics | None = None) -> None:
        self.limits = limits or Limits()
        self._metrics = metrics
        self._pending: dict[iostream.IOStream, None] = {}  # insertion order: oldest first

    def __len__(self) -> int:
        self._forget_closed()
        return len(self._pending)

    def arrived(self, stream: iostream.IOStream) -> None:
        self._forget_closed()
        while len(self._pending) >= self.limits.max_pending:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.close()
            if self._metrics is not None:
                self._metrics.rejected["unauthenticated"] += 1
        self._pending[stream] = None

    def admitted(self, stream: iostream.IOStream | None) -> None:
        """The connection passed the guard: it no longer counts (nor is it hung up)."""
        if stream is not None:
            self._pending.pop(stream, None)

    def _forget_closed(self) -> None:
        for stream in [s for s in self._pending if s.closed()]:
            del self._pending[stream]


class GatedHTTPServer(httpserver.HTTPServer):
    """Tornado's HTTP server with every connection counted by the gate until it authenticates."""

    gate: Gate

    def handle_stream(self, stream: iostream.IOStream, address: tuple[str, int]) -> None:
        self.gate.arrived(stream)
        super().handle_stream(stream, address)


def make_server(app: web.Application, gate: Gate, **kw: object) -> GatedHTTPServer:
    limits = gate.limits
    server = GatedHTTPServer(
        app,
        max_header_size=limits.max_header_bytes,
        idle_connection_timeout=limits.header_timeout,
        body_timeout=limits.body_timeout,
        max_body_size=limits.max_body_bytes,
        chunk_size=READ_CHUNK,
        **kw,
    )
    server.gate = gate
    return server
