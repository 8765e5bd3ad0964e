"""The HTTP side of a WebSocket: check the upgrade request, answer 101, hand the socket over.

After the 101 the socket leaves Tornado: a plain TCP socket is adopted by the event loop's
transport (`wsconn.Connection`), a TLS one stays in Tornado's stream behind a small adapter.
Subclasses implement `open`, `on_message`, `on_pong` and `on_close`, and call `write_message`,
`ping` and `close`, as with Tornado's WebSocketHandler (whose upgrade checks this follows).
"""

from __future__ import annotations

import asyncio
import socket
import sys

from tornado import iostream, web
from tornado.websocket import WebSocketProtocol13

from .wsconn import Connection
from .wstls import StreamTransport


class WebSocketHandler(web.RequestHandler):
    ws: Connection | None = None

    # -- for subclasses ------------------------------------------------------------------
    def check_origin(self, origin: str) -> bool:
        return False

    def max_buffered(self) -> int:
        """Most bytes queued for a client that does not read before it is dropped."""
        return 16 * 1024 * 1024

    async def open(self) -> None:
        pass

    def on_message(self, message: str | bytes) -> None:
        pass

    def on_pong(self, data: bytes) -> None:
        pass

    def on_close(self) -> None:
        pass

    def write_message(self, message: str | bytes, binary: bool = False) -> None:
        if self.ws is not None:
            self.ws.write_message(message, binary)

    def ping(self) -> None:
        if self.ws is not None:
            self.ws.ping()

    def close(self, code: int | None = None, reason: str = "") -> None:
        if self.ws is not None:
            self.ws.close(code, reason)

    # -- the upgrade ---------------------------------------------------------------------
    async def get(self, *args: str) -> None:
        headers = self.request.headers
        connection = [v.strip().lower() for v in headers.get("Connection", "").split(",")]
        if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection:
            self.set_status(400)
            self.finish('Can "Upgrade" only to "WebSocket".')
            return
        if headers.get("Sec-WebSocket-Version") != "13":
            self.set_status(426)
            self.set_header("Sec-WebSocket-Version", "13")
            self.finish()
            return
        key = headers.get("Sec-WebSocket-Key")
        if not key:
            self.set_status(400)
            self.finish("Missing/Invalid WebSocket headers")
            return
        origin = headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            self.set_status(403)
            self.finish("Cross origin websockets not allowed")
            return
        self.clear_header("Content-Type")
        self.set_status(101)
        self.set_header("Upgrade", "websocket")
        self.set_header("Connection", "Upgrade")
        self.set_header("Sec-WebSocket-Accept", WebSocketProtocol13.compute_accept_value(key))
        flushed = self.finish()  # logs the 101
        stream = self.detach()  # now, before Tornado reads the socket for a next request
        max_message = int(self.settings.get("websocket_max_message_size", 10 * 1024 * 1024))
        max_buffered = self.max_buffered()
        conn = Connection(self, max_message=max_message, max_buffered=max_buffered)
        try:
            await flushed
            early = await _adopt(stream, conn, max_buffered)
        except (iostream.StreamClosedError, OSError):
            return  # the client left during the handshake
        self.ws = conn
        try:
            await self.open()
        except Exception:
            self.log_exception(*sys.exc_info())
            conn.give_up()
            return
        conn.start(early)


async def _adopt(stream: iostream.IOStream, conn: Connection, max_buffered: int) -> bytes:
    """Give the stream's socket to `conn`; return bytes the client sent after the handshake."""
    if isinstance(stream, iostream.SSLIOStream):
        stream.set_nodelay(True)  # echo must not wait for Nagle
        StreamTransport(stream, conn, max_buffered)  # its reads start with the buffered bytes
        return b""
    # Anything already read past the request (a client that did not wait for the 101):
    # Tornado keeps it in the stream's buffer, which has no public accessor.
    early = bytes(getattr(stream, "_read_buffer", b""))
    # The descriptor itself changes hands (no dup left to close): Tornado stops watching it,
    # its socket object lets go of it, and the new socket object owns it.
    stream.io_loop.remove_handler(stream.socket)
    sock = socket.socket(fileno=stream.socket.detach())
    stream.close()  # a no-op on the detached socket: the stream is done, the connection not
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # echo must not wait
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, sock)
    except BaseException:
        sock.close()
        raise
    return early
