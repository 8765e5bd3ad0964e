"""MCP servers, through the official `mcp` SDK: stdio servers as child processes, streamable
HTTP servers by URL.

The SDK is asyncio; chat is not. The hub runs one event loop in a daemon thread; each server
lives in one task there, inside the SDK's context managers (anyio wants them entered and left
in the same task), until chat stops it. The main thread gets futures it can wait on and
cancel (Ctrl-C). `mcp` is imported only here, and only when a server is configured.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from chat_cli.errors import short
from chat_cli.tools.mcp_config import ServerSpec
from chat_cli.tools.toolbox import Tool, ToolError, result_text

START_TIMEOUT_S = 30.0
NOTICE_S = 0.3  # servers not ready by then are named, so the wait is not a silent one
DOWN = ("failed", "stopped")
STOP_TIMEOUT_S = 5.0


@dataclass
class ServerState:
    spec: ServerSpec
    status: str = "not started"  # starting, ready, failed, stopped
    detail: str = ""
    tools: list[Tool] = field(default_factory=list)
    session: Any = None
    stop: asyncio.Event | None = None
    errlog: IO[str] | None = None
    read: Any = None  # the transport's read stream: it has no writer left once the server is gone
    noisy: bool = False  # said once: it writes what is not MCP to its stdout

    def last_words(self) -> str:
        """The last line a stdio server wrote to stderr: usually why it failed."""
        if self.errlog is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self.errlog.seek(0)
            lines = [line for line in self.errlog.read().splitlines() if line.strip()]
            return short(lines[-1], 160) if lines else ""
        return ""


class McpHub:
    """The configured servers, started together on first use and stopped with chat."""

    def __init__(
        self,
        specs: list[ServerSpec],
        report: Callable[[str], None],
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.servers = {spec.name: ServerState(spec) for spec in specs}
        self.report = report  # one line per server that fails or dies
        self.notice = notice  # names the servers still starting (None: not shown)
        # The SDK logs (with tracebacks) what chat reports in its own lines: not on screen.
        logging.getLogger("mcp").addHandler(logging.NullHandler())
        logging.getLogger("mcp").propagate = False
        self._retired: list[ServerState] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[concurrent.futures.Future[None]] = []

    def start(self) -> None:
        """Start every server not started yet; wait until each is ready or has failed. The
        ones still starting after NOTICE_S are named; Ctrl-C stops waiting for them (they go
        on starting, and their tools come when they are ready)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="chat-mcp", daemon=True
            )
            self._thread.start()
        waiting = []
        for state in self.servers.values():
            if state.status == "not started":
                state.status = "starting"
                ready: concurrent.futures.Future[None] = concurrent.futures.Future()
                task = asyncio.run_coroutine_threadsafe(self._serve(state, ready), self._loop)
                self._tasks.append(task)
                waiting.append((state, ready))
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            concurrent.futures.wait([ready for _, ready in waiting], NOTICE_S)
            slow = [state.spec.name for state, ready in waiting if not ready.done()]
            if slow and self.notice is not None:
                self.notice(f"starting MCP servers: {', '.join(slow)}… (Ctrl-C skips them)")
            for state, ready in waiting:
                try:
                    ready.result(max(0.0, deadline - time.monotonic()))
                except concurrent.futures.TimeoutError:
                    state.status, state.detail = "failed", f"not ready after {START_TIMEOUT_S:g} s"
                    self.report(f"MCP server {state.spec.name} failed to start: {state.detail}")
        except KeyboardInterrupt:
            skipped = [state for state, ready in waiting if not ready.done()]
            for state in skipped:
                state.status = "skipped"
            names = ", ".join(state.spec.name for state in skipped)
            self.report(
                f"skipped MCP servers still starting ({names}); their tools come once ready"
            )

    def revive(self, name: str) -> bool:
        """Start a server that is down again; False: it is not down."""
        old = self.servers[name]
        self._check(old)
        if old.status not in DOWN:
            return False
        if old.stop is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(old.stop.set)  # its task lets go of the dead process
        self._retired.append(old)
        self.servers[name] = ServerState(old.spec)
        self.start()
        return True

    def _check(self, state: ServerState) -> None:
        """A ready server whose transport has no writer left is gone (its process ended):
        shown down, its tools withdrawn, one line said, as when a call finds it gone."""
        stats = getattr(state.read, "statistics", None)
        if state.status == "ready" and callable(stats) and stats().open_send_streams == 0:
            self._failed(state, EOFError("it exited"), during_start=False)

    def tools(self) -> list[Tool]:
        for state in self.servers.values():
            self._check(state)
        return [t for s in self.servers.values() if s.status == "ready" for t in s.tools]

    def describe(self) -> list[tuple[str, str, list[Tool]]]:
        out = []
        for name, state in self.servers.items():
            self._check(state)
            down = state.status in DOWN
            detail = f" ({state.detail})" if state.detail else ""
            again = f" · /tools on {name} starts it again" if down else ""
            status = "down" if down else state.status
            out.append((name, f"{status}{detail} · {state.spec.where}{again}", state.tools))
        return out

    def call(self, tool: Tool, arguments: dict[str, Any], timeout: float) -> Future:
        """The call's result text as a future; ToolError for a failure the model should see."""
        state = self.servers[tool.server]
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(
            self._call(state, tool, arguments, timeout), self._loop
        )

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        for state in self.servers.values():
            if state.stop is not None:
                loop.call_soon_threadsafe(state.stop.set)
        with contextlib.suppress(
            concurrent.futures.TimeoutError, concurrent.futures.CancelledError
        ):
            concurrent.futures.wait(self._tasks, STOP_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if not self._thread.is_alive():
                loop.close()
        self._loop = None
        for state in [*self.servers.values(), *self._retired]:
            if state.errlog is not None:
                state.errlog.close()

    # -- in the event loop -----------------------------------------------------------------
    async def _serve(self, state: ServerState, ready: concurrent.futures.Future[None]) -> None:
        from mcp import ClientSession  # noqa: PLC0415 (only with MCP servers configured)

        state.stop = asyncio.Event()
        try:
            async with contextlib.AsyncExitStack() as stack:
                transport = await self._transport(state, stack)
                read, write = await stack.enter_async_context(transport)
                state.read = read
                session = await stack.enter_async_context(
                    ClientSession(read, write, message_handler=self._noise(state))
                )
                await asyncio.wait_for(session.initialize(), START_TIMEOUT_S)
                state.tools = await _list_tools(session, state.spec.name)
                state.session, state.status = session, "ready"
                ready.set_result(None)
                await state.stop.wait()
                state.status = "stopped"
        except Exception as err:  # any failure of a server: one line, and chat goes on
            self._failed(state, err, during_start=not ready.done())
        finally:
            state.session = None
            if not ready.done():
                ready.set_result(None)

    def _noise(self, state: ServerState) -> Any:
        """The session's handler for what the transport could not read as MCP: a server
        that prints to its stdout. Said once, in one line; the session goes on."""

        async def handle(message: Any) -> None:
            if isinstance(message, Exception) and not state.noisy:
                state.noisy = True
                self.report(
                    f"MCP server {state.spec.name} wrote to its stdout what is not MCP "
                    f"({_not_mcp(message)}); ignored: its logs belong on stderr"
                )

        return handle

    def _failed(self, state: ServerState, err: BaseException, *, during_start: bool) -> None:
        if state.status == "failed":
            return
        reason = state.last_words() or _reason(err)
        skipped = state.status == "skipped"  # the user stopped waiting: no line at any time
        state.status, state.detail, state.session = "failed", reason, None
        if skipped:
            return
        what = "failed to start" if during_start else "stopped"
        self.report(f"MCP server {state.spec.name} {what} ({reason}); going on without its tools")

    async def _transport(self, state: ServerState, stack: contextlib.AsyncExitStack) -> Any:
        spec = state.spec
        if spec.url is not None:
            from mcp.client.streamable_http import streamable_http_client  # noqa: PLC0415
            from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: PLC0415

            # A client passed in is ours to close (the SDK closes only the one it makes).
            client = await stack.enter_async_context(
                create_mcp_http_client(headers=dict(spec.headers))
            )
            return streamable_http_client(spec.url, http_client=client)
        from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: PLC0415

        assert spec.command is not None
        # Its stderr goes to a file: logs must not scribble over the chat; its last line
        # says why a server failed.
        state.errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        params = StdioServerParameters(
            command=spec.command, args=list(spec.args), env=dict(spec.env) or None, cwd=os.getcwd()
        )
        return stdio_client(params, errlog=state.errlog)

    async def _call(
        self, state: ServerState, tool: Tool, arguments: dict[str, Any], limit: float
    ) -> str:
        session = state.session
        if session is None:
            why = state.detail or state.status
            raise ToolError(f"MCP server {state.spec.name} is down ({why})")
        try:
            result = await asyncio.wait_for(session.call_tool(tool.name, arguments), limit)
        except TimeoutError:
            raise ToolError(f"{tool.name} timed out after {limit:g} s (--tool-timeout)") from None
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if _is_gone(err):
                self._failed(state, err, during_start=False)
            raise ToolError(f"MCP error: {_reason(err)}") from err
        text = result_text(result.content, result.structured_content)
        if result.is_error:
            raise ToolError(text or "the tool failed")
        return text


Future = concurrent.futures.Future[str]


async def _list_tools(session: Any, server: str) -> list[Tool]:
    tools: list[Tool] = []
    cursor = None
    while True:
        from mcp.types import PaginatedRequestParams  # noqa: PLC0415

        params = PaginatedRequestParams(cursor=cursor) if cursor else None
        listed = await asyncio.wait_for(session.list_tools(params=params), START_TIMEOUT_S)
        for tool in listed.tools:
            schema = dict(tool.input_schema or {}) or {"type": "object", "properties": {}}
            tools.append(Tool(server, tool.name, tool.description or "", schema))
        cursor = listed.next_cursor
        if not cursor:
            return tools


def _is_gone(err: BaseException) -> bool:
    """The connection to the server is closed: the process died or the server went away."""
    import anyio  # noqa: PLC0415 (the SDK's own dependency)

    gone = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)
    return isinstance(err, gone) or "closed" in str(err).lower()


def _not_mcp(err: Exception) -> str:
    """The line a server wrote, from the parse error the SDK hands on (pydantic's)."""
    errors = getattr(err, "errors", None)
    with contextlib.suppress(Exception):
        line = errors()[0]["input"] if callable(errors) else None
        if isinstance(line, str):
            return short(line, 80)
    return short(str(err), 80)


def _reason(err: BaseException) -> str:
    if isinstance(err, BaseExceptionGroup) and err.exceptions:
        return _reason(err.exceptions[0])
    return short(str(err) or type(err).__name__, 160)
