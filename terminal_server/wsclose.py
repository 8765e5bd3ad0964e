"""A WebSocket protocol whose 1009 close frame reaches the client.

Tornado answers a frame over the size limit with a close frame (1009) and closes the socket at
once. The rest of the frame is still unread, so the kernel answers with a TCP reset, and a reset
makes the client's kernel drop what it had not read yet, the close frame included: a browser
then reports 1006. Here the socket stays open after the close frame: the write side is shut
down (the client sees the close frame, then EOF) and whatever the client still sends is read
and discarded until it hangs up or a deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from tornado import iostream, websocket

from . import protocol

DRAIN_S = 5.0  # as long as Tornado waits for a client's close frame


class DrainingProtocol(websocket.WebSocketProtocol13):
    _drain_pending = False
    _drain_task: asyncio.Task[None] | None = None

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if code == protocol.CLOSE_TOO_BIG:
            self._drain_pending = True
        super().close(code, reason)

    def _abort(self) -> None:
        if self._drain_task is not None:
            return  # the drain closes the socket when it is done
        if not self._drain_pending or self.stream is None or self.stream.closed():
            super()._abort()
            return
        # Stops the frame loop, which then tells the handler (its on_close runs now).
        self.client_terminated = self.server_terminated = True
        self._drain_task = asyncio.ensure_future(self._drain(self.stream))

    async def _drain(self, stream: iostream.IOStream) -> None:
        try:
            async with asyncio.timeout(DRAIN_S):
                await stream.write(b"")  # resolves once the close frame is in the kernel
                with contextlib.suppress(OSError):
                    stream.socket.shutdown(socket.SHUT_WR)
                while True:
                    await stream.read_bytes(64 * 1024, partial=True)
        except (iostream.StreamClosedError, TimeoutError):
            pass
        finally:
            self._drain_pending = False
            self._drain_task = None
            super()._abort()
