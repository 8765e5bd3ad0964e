"""The WebSocket layer (wsupgrade + wsconn) spoken to byte by byte over real sockets, on the
event loop the server runs on (uvloop) and on asyncio's own: their transports differ in when
they start reading, which is where messages were lost."""

from __future__ import annotations

import asyncio
import json
import socket
from types import TracebackType

import pytest

from terminal_server import protocol
from terminal_server.terminals import Session
from terminal_server.wsconn import Connection

from .support import wait_for_async
from .terminal_support import Server, running_server
from .ws_support import LOOPS, Raw, client_frame, run_on, served, stdin, upgrade


async def ready(srv: Server) -> tuple[Raw, Session]:
    """A socket whose shell has answered, and its session."""
    raw = await upgrade(srv, then=stdin("echo ready'-'now\r"))
    await raw.until(b"ready-now")
    assert raw.setup is not None
    return raw, srv.ctx.manager.sessions[str(raw.setup["session"])]


@served
async def test_frames_sent_with_the_upgrade_request_are_not_lost(srv: Server) -> None:
    raw = await upgrade(srv, then=stdin("echo early'-'bird\r"))
    await raw.until(b"early-bird")
    raw.hang_up()


@served
async def test_input_sent_while_the_session_restarts_is_not_lost(srv: Server) -> None:
    # A restart's open() waits for the old session's processes to die; what the client sends
    # meanwhile must wait for the new session, not be dropped for want of one.
    first = await srv.connect()
    raw = await upgrade(srv, f"session={first.session_id}&restart=1")
    raw.send(stdin("echo after'-'restart\r"))
    await raw.until(b"after-restart")
    assert raw.setup is not None and raw.setup["session"] != first.session_id
    raw.hang_up()


@served
async def test_fragments_pings_and_frames_split_anywhere_make_the_same_messages(
    srv: Server,
) -> None:
    raw = await upgrade(srv, then=stdin("echo ready'-'now\r"))
    await raw.until(b"ready-now")
    text = json.dumps([protocol.STDIN, "echo frag'-'mented\r"]).encode()
    # 70,000 bytes of JSON whitespace: a frame with a 64-bit length.
    big = b'["stdin", "echo big\'-\'frame\\r"' + b" " * 70_000 + b"]"
    wire = (
        client_frame(0x1, text[:5], fin=False)
        + client_frame(0x9, b"are you there")  # a ping between fragments
        + client_frame(0x0, text[5:12], fin=False)
        + client_frame(0x0, text[12:])
        + client_frame(0x1, big)
    )
    head = 7 * 90  # the head of it in 7-byte packets, into the big frame's payload
    for start in range(0, head, 7):
        raw.send(wire[start : start + 7])
        await raw.writer.drain()
        await asyncio.sleep(0.001)
    raw.send(wire[head:])
    opcode, payload = await raw.frame()
    while opcode != 0xA:
        raw.output += payload if opcode == 0x2 else b""
        opcode, payload = await raw.frame()
    assert payload == b"are you there"
    await raw.until(b"frag-mented")
    await raw.until(b"big-frame")
    raw.hang_up()


VIOLATIONS = {
    "unmasked": (bytes([0x81, 0x02]) + b"hi", 1002),
    "reserved bit": (client_frame(0x1, b"[]", rsv=0x40), 1002),
    "not UTF-8": (client_frame(0x1, b'["stdin", "\xff\xfe"]'), 1007),
    "continuation of nothing": (client_frame(0x0, b"x"), 1002),
    "long control frame": (client_frame(0x9, b"p" * 126), 1002),
    "fragmented control frame": (client_frame(0x9, b"p", fin=False), 1002),
    "unknown opcode": (client_frame(0x3, b"x"), 1002),
}


@served
async def test_each_protocol_violation_closes_with_its_code_and_the_server_serves_on(
    srv: Server,
) -> None:
    for name, (wire, code) in VIOLATIONS.items():
        raw = await upgrade(srv)
        raw.send(wire)
        assert await raw.close_code() == code, name
        raw.hang_up()
    other = await upgrade(srv, then=stdin("echo still'-'serving\r"))
    await other.until(b"still-serving")
    other.hang_up()


@served
async def test_a_client_close_is_echoed_then_the_connection_ends_and_the_session_stays(
    srv: Server,
) -> None:
    raw, session = await ready(srv)
    raw.send(client_frame(0x8, (1000).to_bytes(2, "big") + b"bye"))
    assert await raw.close_code() == 1000
    assert await asyncio.wait_for(raw.reader.read(), 10) == b""  # then EOF
    await wait_for_async(lambda: session.client is None, what="the client detached")
    assert not session.closed  # kept for a reattach
    raw.hang_up()


class _Endpoint:
    def __init__(self) -> None:
        self.closed = False

    def on_message(self, message: str | bytes) -> None:
        pass

    def on_pong(self, data: bytes) -> None:
        pass

    def on_close(self) -> None:
        self.closed = True

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        raise AssertionError("no exception expected")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_reads_nothing_is_dropped_once_its_buffer_is_full(loop: str | None) -> None:
    # Flow control bounds what an honest client holds; one that acknowledges output without
    # reading it must not make the server buffer without end.
    async def body() -> None:
        ours, theirs = socket.socketpair()
        endpoint = _Endpoint()
        conn = Connection(endpoint, max_message=1024, max_buffered=1024 * 1024)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, ours)
        conn.start()
        chunk = b"x" * 65536
        sent = 0
        while not endpoint.closed and sent < 64 * 1024 * 1024:
            conn.write_message(chunk, binary=True)
            sent += len(chunk)
            await asyncio.sleep(0)
        await wait_for_async(lambda: endpoint.closed, what="the connection dropped")
        assert sent < 16 * 1024 * 1024, sent  # kernel buffers plus the 1 MiB bound
        theirs.close()

    run_on(loop, body)


@served
async def test_a_client_gone_while_its_session_opens_leaves_no_session_attached(
    srv: Server,
) -> None:
    # on_close must follow open(): run before it, the session open() then attaches would keep
    # a dead client forever (never idle-culled, its output window never acknowledged).
    first = await srv.connect()
    raw = await upgrade(srv, f"session={first.session_id}&restart=1")
    raw.hang_up()  # while the restart waits for the old session's processes
    await wait_for_async(
        lambda: len(srv.ctx.manager.sessions) == 1 and not srv.ctx.sockets,
        what="only the restarted session, and no socket open",
    )
    (session,) = srv.ctx.manager.sessions.values()
    await wait_for_async(lambda: session.client is None, what="no dead client attached")


@served
async def test_a_message_over_the_limit_gets_1009_then_eof_while_the_client_still_sends(
    srv: Server,
) -> None:
    # The server shuts its side after the close frame and drops what still comes. Closing
    # outright would answer the client's next bytes with a reset, and a reset makes the
    # client's kernel drop what it has not read yet: the close frame (a browser sees 1006).
    raw, session = await ready(srv)
    raw.reading(False)  # the close frame will wait in the kernel, unread
    size = srv.ctx.config.max_message_bytes + 1
    raw.send(bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 65536)
    await raw.writer.drain()
    await wait_for_async(lambda: session.client is None, what="the server gave up the frame")
    for _ in range(20):  # as a browser does: it is still sending the rest
        raw.send(b"x" * 4096)
        await raw.writer.drain()
        await asyncio.sleep(0.01)
    raw.reading(True)
    assert await raw.close_code() == 1009
    assert await asyncio.wait_for(raw.reader.read(), 10) == b""
    raw.hang_up()
    other = await upgrade(srv, then=stdin("echo still'-'serving\r"))
    await other.until(b"still-serving")
    other.hang_up()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_sends_its_own_pongs_but_reads_nothing_is_dropped(loop: str | None) -> None:
    # An unsolicited pong is allowed, but only an answer to our ping shows the client reads.
    async def body() -> None:
        async with running_server(ping_interval=0.5) as srv:
            raw, session = await ready(srv)
            raw.reading(False)
            try:
                for _ in range(200):  # pongs for 10 s, well past the interval
                    if session.client is None:
                        break
                    raw.send(client_frame(0xA, b""))
                    await raw.writer.drain()
                    await asyncio.sleep(0.05)
            finally:
                raw.hang_up()
            assert session.client is None, "kept alive by pongs to no ping"
            assert not session.closed  # kept for a reattach

    run_on(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_what_the_server_closes_with_is_a_valid_close_frame(loop: str | None) -> None:
    async def body() -> None:
        for code, reason, payload in [
            # A reason cut to fit 123 bytes is cut between characters, not inside one.
            (4000, "é" * 100, (4000).to_bytes(2, "big") + "é".encode() * 61),
            (1006, "dropped", b""),  # 1005, 1006 and 1015 are never sent: no code at all
            (1015, "", b""),
            (None, "", b""),
        ]:
            ours, theirs = socket.socketpair()
            conn = Connection(_Endpoint(), max_message=1024, max_buffered=1024 * 1024)
            await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, ours)  # noqa: B023
            conn.start()
            conn.close(code, reason)
            theirs.settimeout(10)
            head = theirs.recv(2)
            assert head[0] == 0x88, head
            assert theirs.recv(head[1]) == payload, code
            conn.abort()
            theirs.close()

    run_on(loop, body)
