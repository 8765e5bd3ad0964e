"""A TLS WebSocket behind wsconn's `Transport` interface: the event loop cannot adopt a socket
whose TLS session Tornado already holds, so the bytes keep flowing through Tornado's stream."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from tornado import iostream

from .wsconn import Connection

READ_CHUNK = 64 * 1024  # most bytes taken from Tornado's stream per read


class StreamTransport:
    """A Tornado stream as the transport of one connection."""

    def __init__(self, stream: iostream.IOStream, protocol: Connection, max_buffered: int) -> None:
        self._stream = stream
        self._protocol = protocol
        self._reader: asyncio.Task[None] | None = None
        stream.max_write_buffer_size = max_buffered
        stream.set_close_callback(lambda: protocol.connection_lost(None))
        protocol.attach(self)

    def write(self, data: bytes) -> None:
        try:
            self._stream.write(data).add_done_callback(_consume)
        except iostream.StreamBufferFullError:
            self._protocol.pause_writing()
        except iostream.StreamClosedError:
            pass

    def write_eof(self) -> None:
        def shut(_: object) -> None:
            if not self._stream.closed():
                with contextlib.suppress(OSError):
                    self._stream.socket.shutdown(socket.SHUT_WR)

        self._after_flush(shut)

    def close(self) -> None:
        self._after_flush(lambda _: self._stream.close())

    def abort(self) -> None:
        self._stream.close()

    def pause_reading(self) -> None:
        pass  # reading starts with resume_reading()

    def resume_reading(self) -> None:
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read())

    def _after_flush(self, then: Callable[[asyncio.Future[None]], None]) -> None:
        if self._stream.closed():
            return
        try:
            fut = self._stream.write(b"")
        except iostream.StreamClosedError:
            return
        fut.add_done_callback(then)

    async def _read(self) -> None:
        try:
            while True:
                self._protocol.data_received(await self._stream.read_bytes(READ_CHUNK, True))
        except iostream.StreamClosedError:
            pass


def _consume(fut: asyncio.Future[None]) -> None:
    # A write to a closed stream fails; its close callback handles that, nobody awaits it.
    if not fut.cancelled():
        fut.exception()
