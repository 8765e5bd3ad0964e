"""What a stranger's connection can make the server hold: nothing of a refused request's body,
headers and bodies for seconds only, and a bounded number of connections (gate.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

import psutil
import pytest

from terminal_server.gate import Limits

from .support import wait_for_async
from .terminal_support import TOKEN, Server, run, running_server, server_process

BIG = 50 * 1024 * 1024
SHORT = Limits(header_timeout=0.5, body_timeout=0.5, max_pending=4)


def _head(srv: Server, method: str, path: str, length: int, extra: str = "") -> bytes:
    return (
        f"{method} {srv.ctx.config.base_path}{path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


async def _answer_then_eof(
    reader: asyncio.StreamReader, timeout: float = 10.0
) -> tuple[bytes, bytes]:
    """The answer's head, then whatever comes until the server hangs up (within `timeout`)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    rest = await asyncio.wait_for(reader.read(), timeout)
    return head, rest


async def _hung_up(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """What the server sent before it closed the connection (within `timeout`)."""
    with contextlib.suppress(ConnectionResetError):
        return await asyncio.wait_for(reader.read(), timeout)
    return b""


@contextlib.asynccontextmanager
async def _connection(
    srv: Server, data: bytes = b""
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(data)
        await writer.drain()
        yield reader, writer
    finally:
        writer.transport.abort()


REFUSED = [
    # (method, path, extra headers, status): no token, a wrong Host, a foreign origin, a body
    # too big for the route; each is answered as soon as its headers are in.
    ("POST", "api/share?session=x", "", 403),
    ("POST", "", "", 403),
    ("GET", "ws", "", 403),
    ("POST", "view/", "", 403),
    ("POST", "healthz", "Host: evil.example\r\n", 403),
    ("POST", "api/share?session=x", f"Authorization: Bearer {TOKEN}\r\n", 413),
    ("POST", "healthz", f"Authorization: Bearer {TOKEN}\r\n", 413),
    (
        "POST",
        "api/share?session=x",
        f"Authorization: Bearer {TOKEN}\r\nOrigin: http://e.x\r\n",
        403,
    ),
]


@pytest.mark.parametrize(("method", "path", "extra", "status"), REFUSED)
def test_a_refused_request_is_answered_before_its_body_and_its_body_is_never_read(
    method: str, path: str, extra: str, status: int
) -> None:
    async def body() -> None:
        async with running_server() as srv:
            head = _head(srv, method, path, BIG, extra)
            if "Host: evil" in extra:
                head = re.sub(rb"Host: 127[^\r]*\r\n", b"", head)
            # Only the headers: the answer must not wait for the 50 MB announced.
            async with _connection(srv, head) as (reader, _):
                answer, rest = await _answer_then_eof(reader)
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
            assert b"Traceback" not in rest
            # The server hangs up after a refusal: it says so, so that a client that keeps its
            # connections alive (a browser, Playwright's request context) opens a new one for
            # its next request instead of meeting a reset.
            assert b"\r\nConnection: close\r\n" in answer, answer

    run(body)


def test_four_parallel_unauthenticated_uploads_leave_the_servers_memory_alone() -> None:
    """The issue's case scaled down: before, the server held every upload's whole body."""
    mb = 32

    async def upload(port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /api/share HTTP/1.1\r\nHost: evil.example\r\nContent-Length: {mb << 20}\r\n"
            "\r\n".encode()
        )
        sent = 0
        try:
            chunk = bytes(1 << 20)
            for _ in range(mb):
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            await asyncio.wait_for(reader.readline(), 10)  # (the server that read it all)
        except ConnectionError:
            pass  # the server hung up on the body it does not read
        finally:
            writer.transport.abort()
        return sent

    with server_process(env={"MIXVLLM_TERMINAL_TOKEN": TOKEN}) as (proc, url):
        port = int(re.findall(r":(\d+)/", url)[0])
        server = psutil.Process(proc.pid)

        async def body() -> None:
            before = server.memory_info().rss
            peak = before
            uploads = asyncio.gather(*(upload(port) for _ in range(4)))
            while not uploads.done():
                peak = max(peak, server.memory_info().rss)
                await asyncio.sleep(0.005)
            sent = await uploads
            peak = max(peak, server.memory_info().rss)
            assert (peak - before) < 8 << 20, f"RSS {before >> 20} -> {peak >> 20} MiB"
            assert sum(sent) < 4 * (mb << 20), "the server read every body to its end"

        run(body)


def test_headers_and_bodies_have_deadlines_of_seconds() -> None:
    async def body() -> None:
        async with running_server(limits=SHORT) as srv:
            # Headers trickled (never finished), then a body dribbled after good headers.
            async with _connection(srv, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n") as (r, _):
                assert await _hung_up(r, 5) == b""
            head = _head(
                srv, "POST", "api/share?session=x", 100, f"Authorization: Bearer {TOKEN}\r\n"
            )
            async with _connection(srv, head + b"x") as (r, _):
                assert await _hung_up(r, 5) == b""
            # The server is still there for the owner.
            assert (await srv.fetch("healthz", srv.auth_headers())).code == 200

    run(body)


def test_strangers_connections_are_bounded_and_the_oldest_goes_first() -> None:
    async def body() -> None:
        async with running_server(limits=Limits(max_pending=4)) as srv:
            owner = await srv.connect()  # authenticated: never counted, never hung up
            strangers = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(10)]
            try:
                for _, writer in strangers:
                    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
                await wait_for_async(lambda: srv.ctx.metrics.rejected["unauthenticated"] == 6)
                assert len(srv.ctx.gate) == 4
                for reader, _ in strangers[:6]:  # the oldest six were hung up
                    assert await _hung_up(reader, 5) == b""
                for reader, _ in strangers[6:]:
                    assert not reader.at_eof()
                owner.type("echo still-here\r")
                await owner.expect("still-here")
                # A newcomer with the token is not refused for the strangers' sake.
                assert (await srv.fetch("healthz", srv.auth_headers())).code == 200
            finally:
                for _, writer in strangers:
                    writer.transport.abort()

    run(body)


def test_bounds_do_not_get_in_the_owners_way(caplog: pytest.LogCaptureFixture) -> None:
    """Kept-alive requests with the token, a small body where the API takes one, a chunked one
    past the bound refused without a traceback."""

    async def body() -> None:
        async with running_server() as srv:
            owner = await srv.connect()
            auth = f"Authorization: Bearer {TOKEN}\r\n"
            post = _head(srv, "POST", f"api/share?session={owner.session_id}", 2, auth) + b"{}"
            get = _head(srv, "GET", "healthz", 0, auth)
            async with _connection(srv, post + get) as (reader, _):
                first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert first.startswith(b"HTTP/1.1 200 "), first
                length = int(re.findall(rb"Content-Length: (\d+)", first)[0])
                await reader.readexactly(length)
                second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert second.startswith(b"HTTP/1.1 200 "), second
            share = f"{srv.ctx.config.base_path}api/share?session={owner.session_id}"
            chunked = (
                (
                    f"POST {share} HTTP/1.1\r\n"
                    f"Host: 127.0.0.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
                ).encode()
                + b"10000\r\n"
                + bytes(0x10000)
                + b"\r\n"
            )
            async with _connection(srv, chunked) as (reader, _):
                assert b" 200 " not in await _hung_up(reader)

    with caplog.at_level(logging.DEBUG):
        run(body)
    assert not any(r.exc_info for r in caplog.records), "no tracebacks"


def test_the_gate_counts_only_open_connections() -> None:
    async def body() -> None:
        async with running_server(limits=Limits(max_pending=4)) as srv:
            for _ in range(3):
                assert (await srv.fetch("healthz")).code == 403
            await wait_for_async(lambda: len(srv.ctx.gate) == 0, 5, "the refused gone")
            assert srv.ctx.metrics.rejected["unauthenticated"] == 0

    run(body)
