"""A real terminal server on an ephemeral port plus a small WebSocket client, for the tests."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado import httpclient, httpserver, netutil, websocket

from terminal_server import protocol
from terminal_server.app import STATIC_DIR, close_clients, make_context, make_http_server
from terminal_server.config import Config
from terminal_server.context import Context
from terminal_server.gate import Limits
from tests.support import wait_for_async

ROOT = Path(__file__).resolve().parent.parent
TEST_SHELL = ("/bin/bash", "--norc", "--noprofile")
TOKEN = "test-token-0123456789"


def make_config(**overrides: Any) -> Config:
    base = Config(
        port=0,
        autostart_chat=False,
        shell=TEST_SHELL,
        token=TOKEN,
        idle_timeout=60.0,
        cwd="/tmp",
    )
    return dataclasses.replace(base, **overrides)


@dataclass
class Server:
    ctx: Context
    port: int
    clients: list[Client] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.ctx.config.base_path}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.ctx.config.base_path}ws"

    def auth_headers(self) -> dict[str, str]:
        return {"Cookie": f"{self.ctx.cookie_name}={TOKEN}"}

    async def fetch(
        self, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpclient.HTTPResponse:
        client = httpclient.AsyncHTTPClient()
        # "/x" is absolute on the server; "x" is relative to the base path.
        url = f"http://127.0.0.1:{self.port}{path}" if path.startswith("/") else self.http + path
        req = httpclient.HTTPRequest(url, headers=headers, follow_redirects=False, **kw)
        return await client.fetch(req, raise_error=False)

    async def connect(
        self,
        query: str = "",
        headers: dict[str, str] | None = None,
        *,
        auth: bool = True,
        auto_ack: bool = True,
        wait_setup: bool = True,
    ) -> Client:
        hdrs = dict(self.auth_headers() if auth else {})
        hdrs.update(headers or {})
        req = httpclient.HTTPRequest(self.ws + (f"?{query}" if query else ""), headers=hdrs)
        conn = await websocket.websocket_connect(req)
        client = Client(conn, auto_ack=auto_ack)
        self.clients.append(client)
        if wait_setup:
            await client.wait_setup()
        return client


class Client:
    """Reads frames in the background; stdout is collected and (by default) acknowledged."""

    def __init__(self, conn: websocket.WebSocketClientConnection, *, auto_ack: bool) -> None:
        self.conn = conn
        self.auto_ack = auto_ack
        self.output = ""
        self.frames: list[list[Any]] = []
        self.unacked = 0  # frames, or bytes where setup offered ack_bytes
        self.ack_every = 0
        self.setup: dict[str, Any] | None = None
        self.binary_frames = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.closed = asyncio.Event()
        self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        while True:
            raw = await self.conn.read_message()
            if raw is None:
                self.closed.set()
                return
            size = 1
            if isinstance(raw, bytes):
                self.binary_frames += 1
                size = len(raw) if self.ack_every else 1
                raw = json.dumps([protocol.STDOUT, self._decoder.decode(raw)])
            msg = json.loads(raw)
            self.frames.append(msg)
            if msg[0] == protocol.SETUP:
                self.setup = msg[1]
                self.ack_every = int(msg[1].get("ack_bytes", 0))
            elif msg[0] == protocol.STDOUT:
                self.output += msg[1]
                self.unacked += size
                # As the page does: by bytes only once the server's threshold is reached.
                if self.auto_ack and self.unacked >= self.ack_every:
                    self.ack()

    def ack(self) -> None:
        if self.unacked and self.conn.protocol is not None:
            with contextlib.suppress(websocket.WebSocketClosedError):
                self.send(protocol.ACK_BYTES if self.ack_every else protocol.ACK, self.unacked)
            self.unacked = 0

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    @property
    def session_id(self) -> str:
        assert self.setup is not None
        return str(self.setup["session"])

    def send(self, *msg: Any) -> None:
        self.conn.write_message(json.dumps(list(msg)))

    def send_raw(self, data: str | bytes) -> None:
        self.conn.write_message(data, binary=isinstance(data, bytes))

    def type(self, text: str) -> None:
        self.send(protocol.STDIN, text)

    async def wait_setup(self, timeout: float = 10.0) -> None:
        await wait_for_async(
            lambda: self.setup is not None or self.closed.is_set(), timeout, "setup"
        )

    async def expect(self, needle: str, timeout: float = 10.0) -> None:
        await wait_for_async(lambda: needle in self.output or self.closed.is_set(), timeout, needle)
        assert needle in self.output, f"{needle!r} not in output (closed): {self.output[-500:]!r}"

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self) -> None:
        self.conn.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 5)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def running_server(
    static_dir: Path = STATIC_DIR, limits: Limits | None = None, **overrides: Any
) -> AsyncIterator[Server]:
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    config = make_config(**overrides)
    ctx = make_context(dataclasses.replace(config, port=port), static_dir, limits)
    http = make_http_server(ctx)
    http.add_sockets(sockets)
    ctx.manager.start()
    server = Server(ctx, port)
    try:
        yield server
    finally:
        try:
            for client in server.clients:
                await client.close()
        finally:
            await _stop(ctx, http)


async def _stop(ctx: Context, http: httpserver.HTTPServer) -> None:
    http.stop()
    await close_clients(ctx)
    await ctx.manager.shutdown()
    await http.close_all_connections()


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(_with_timeout(coro_fn))


async def _with_timeout(coro_fn: Callable[[], Awaitable[None]]) -> None:
    await asyncio.wait_for(coro_fn(), 100)


@contextlib.contextmanager
def server_process(
    *args: str,
    env: Mapping[str, str] | None = None,
    stderr: int = subprocess.PIPE,
    prefix: Sequence[str] = (),
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m terminal_server --port 0 ARGS`; yields (the process, the URL its banner prints).

    `prefix` runs it through a wrapper that execs it (setpriv). Afterwards it is stopped
    with SIGTERM and, if the test passed, must have exited 0.
    """
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "terminal_server", "--port", "0", *args],
        cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=stderr, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the banner; blocks until the server listens
        match = re.search(r"open (https?://\S+)", line)
        if match is None:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"no banner from the server: {line!r} {err!r}")
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert code == 0, f"the terminal server exited with {code}"


async def close_websocket(conn: websocket.WebSocketClientConnection) -> None:
    """Close and wait until the socket is shut: a close() left pending when the test's event
    loop ends leaves the socket to the garbage collector."""
    conn.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(_until_closed(conn), 5)


async def _until_closed(conn: websocket.WebSocketClientConnection) -> None:
    while await conn.read_message() is not None:
        pass


async def open_raw(port: int, request: bytes) -> tuple[bytes, asyncio.StreamWriter]:
    """Send raw bytes on a new connection; return the answer's head and the open connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except asyncio.IncompleteReadError as exc:
        head = exc.partial  # the server hung up without an answer
    except BaseException:
        writer.transport.abort()
        raise
    return head, writer


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes (any bytes) on a new connection; return the answer's head."""
    head, writer = await open_raw(port, request)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return head
