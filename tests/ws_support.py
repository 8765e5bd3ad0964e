"""A WebSocket client by hand for the tests of our own framing (wsconn): raw frames over a
real TCP socket to a real server, on the event loop the server runs on (uvloop) and on
asyncio's own."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

from terminal_server import protocol
from tests.conftest import require

from .terminal_support import TOKEN, Server, running_server

LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None


def _uvloop() -> LoopFactory:
    # The `fast` extra, which `make test` installs: the loop the server runs on there.
    require(importlib.util.find_spec("uvloop") is not None, "uvloop (the fast extra) missing")
    import uvloop  # noqa: PLC0415

    return uvloop.new_event_loop


LOOPS = [pytest.param(None, id="asyncio"), pytest.param("uvloop", id="uvloop")]


def run_on(loop: str | None, body: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    factory = _uvloop() if loop == "uvloop" else None

    async def bounded() -> None:
        await asyncio.wait_for(body(), timeout)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(bounded())


def served(test: Callable[[Server], Awaitable[None]]) -> Callable[[str | None], None]:
    """`test` on a running server, once per event loop."""

    @pytest.mark.parametrize("loop", LOOPS)
    def on_loop(loop: str | None) -> None:
        async def body() -> None:
            async with running_server() as srv:
                await test(srv)

        run_on(loop, body)

    on_loop.__name__ = on_loop.__qualname__ = test.__name__
    on_loop.__doc__ = test.__doc__
    return on_loop


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked frame, as a client must send it."""
    mask = b"\x37\xfa\x21\x3d"
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 1 << 16:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | rsv | opcode]) + length + mask + masked


def stdin(text: str) -> bytes:
    return client_frame(0x1, json.dumps([protocol.STDIN, text]).encode())


class Raw:
    """A WebSocket client by hand: what it writes is exactly what the server reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.output = b""
        self.setup: dict[str, object] | None = None

    async def frame(self) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), 10)
        length = head[1] & 0x7F
        if length >= 126:
            length = int.from_bytes(await self.reader.readexactly(2 if length == 126 else 8))
        return head[0] & 0x0F, await self.reader.readexactly(length)

    async def until(self, wanted: bytes) -> None:
        """Read stdout (binary frames) until `wanted` shows up."""
        while wanted not in self.output:
            opcode, payload = await self.frame()
            assert opcode != 0x8, f"closed: {payload!r}; output {self.output[-300:]!r}"
            if opcode == 0x2:
                self.output += payload
            elif opcode == 0x1 and json.loads(payload)[0] == protocol.SETUP:
                self.setup = json.loads(payload)[1]

    async def close_code(self) -> int:
        """Read until the server's close frame; its code."""
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def hang_up(self) -> None:
        self.writer.transport.abort()

    def reading(self, on: bool) -> None:
        """Take in what the server sends, or leave it in the kernel."""
        transport = cast(asyncio.Transport, self.writer.transport)
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()


async def upgrade(srv: Server, query: str = "", then: bytes = b"") -> Raw:
    """Open /ws?binary=1&QUERY; `then` goes out in the same write as the request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = (
        f"GET /ws?binary=1{'&' + query if query else ''} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{srv.port}\r\nCookie: {srv.ctx.cookie_name}={TOKEN}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    writer.write(request.encode() + then)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status, *lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines if line)
        assert status.startswith("HTTP/1.1 101"), head
        # RFC 6455's example key and answer (lower-cased here, as every header)
        assert headers["sec-websocket-accept"] == "s3pplmbitxaq9kygzzhzrbk+xoo="
    except BaseException:
        writer.transport.abort()
        raise
    return Raw(reader, writer)
