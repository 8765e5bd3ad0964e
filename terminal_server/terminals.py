"""PTY sessions: flow-controlled output, bounded scrollback, clients; the manager of them all.

Output flow control: each attached client may hold at most `window` bytes of output it
has not acknowledged yet. When the window is full the session stops reading the PTY, the
kernel's PTY buffer fills, and the program blocks in write() instead of the server
buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from . import processes
from .identity import OWNER
from .metrics import Metrics
from .scrollback import Scrollback

log = logging.getLogger("mixvllm.terminal")

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
INPUT_WRITE_MAX = 64 * 1024  # most bytes of typed input handed to one write()
# Most PTY output read in one wake-up: the shared scratch buffer's size.
OUTPUT_READ_MAX = 256 * 1024
FRAME_MAX = 64 * 1024  # bytes per stdout frame
INTERACTIVE_MAX = 1024  # small output goes out at once (echo); bigger reads are batched
SHORT_READ = 1024  # a PTY read this short has emptied the PTY's buffer, as far as it matters
COALESCE_S = 0.002  # otherwise wait this long to batch reads into one frame
MAX_PENDING_INPUT = 4 * 1024 * 1024


class InputOverflowError(RuntimeError):
    """More typed input is queued than the program reads."""


class Client(Protocol):
    """What a session needs from an attached WebSocket."""

    def send_output(self, data: bytes) -> None: ...

    def session_ended(self, exit_code: int | None) -> None: ...


class Audience(Protocol):
    """Read-only watchers of a session (a share's viewers): fed its output, never throttle it."""

    def feed(self, data: bytes) -> None: ...

    def resized(self, rows: int, cols: int) -> None: ...

    def session_ended(self, exit_code: int | None) -> None: ...


class Session:
    def __init__(
        self,
        session_id: str,
        proc: subprocess.Popen[bytes],
        fd: int,
        *,
        scrollback_limit: int,
        window: int,
        metrics: Metrics,
        read_buffer: memoryview,
        end: Callable[[subprocess.Popen[bytes]], Awaitable[bool]],
        on_closed: Callable[[Session], None],
        owner: str = OWNER,
    ) -> None:
        self.id = session_id
        self.owner = owner  # the user (identity.py) it belongs to; only they may reach it
        self.proc = proc
        self.fd = fd
        self.client: Client | None = None
        self.audience: Audience | None = None
        self.detached_at: float | None = time.monotonic()
        self.started_at = self.last_input = time.monotonic()  # for the idle cull, admin page
        self.end_reason: str | None = None  # why it was closed (the audit log's "reason")
        self.exit_code: int | None = None
        self._loop = asyncio.get_running_loop()
        self._metrics = metrics
        self._read_buffer = read_buffer  # shared by every session: all read on this loop
        self._end = end  # kills and reaps every process of the session, off the event loop
        self._on_closed = on_closed
        self._window = window
        self._scrollback = Scrollback(scrollback_limit)
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._unacked_len = 0  # bytes sent to the client and not acknowledged yet
        self._flush_handle: asyncio.TimerHandle | None = None
        self._input = bytearray()
        self._reading = False
        self._writing = False
        self._closing: asyncio.Task[None] | None = None
        self._update_reader()

    # -- flow-control state, visible for tests and metrics --------------------------------
    @property
    def outstanding(self) -> int:
        """Output bytes read from the PTY that the client has not acknowledged."""
        return self._pending_len + self._unacked_len

    @property
    def reading(self) -> bool:
        return self._reading

    @property
    def window_full(self) -> bool:
        """The client holds a full window of unacknowledged output: the PTY is not read."""
        return self.client is not None and self.outstanding >= self._window

    @property
    def closed(self) -> bool:
        return self._closing is not None

    # -- clients ------------------------------------------------------------------------
    def attach(self, client: Client) -> Client | None:
        """Attach `client`, replaying recent output; return the client it replaces."""
        old, self.client = self.client, client
        self._reset_flow()
        self.detached_at = None
        replay = self._scrollback.replay()
        for start in range(0, len(replay), FRAME_MAX):
            self._send(replay[start : start + FRAME_MAX])
        self._update_reader()
        return old

    def detach(self, client: Client) -> None:
        if self.client is not client:
            return
        self.client = None
        self._reset_flow()
        self.detached_at = time.monotonic()
        self._update_reader()

    def ack(self, nbytes: int) -> bool:
        """Record that the client consumed `nbytes` of output; False if it over-acks.

        The client counts the bytes (or frames, translated by its socket) of its own
        connection: each attach starts the count from zero.
        """
        if self.closed:  # acks still in flight while the session shuts down
            return True
        if nbytes > self._unacked_len:
            return False
        self._unacked_len -= nbytes
        self._update_reader()
        return True

    def replay(self) -> bytes:
        return self._scrollback.replay()

    # -- input ----------------------------------------------------------------------------
    def write(self, text: str) -> None:
        self.last_input = time.monotonic()
        data = text.encode("utf-8", "replace")
        self._metrics.bytes_in += len(data)
        if not self._input and not self.closed and len(data) <= INPUT_WRITE_MAX:
            # A keystroke: straight to the PTY, no queue (the queue is for a full PTY buffer).
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                return
            if written == len(data):
                return
            data = data[written:]
        if len(self._input) + len(data) > MAX_PENDING_INPUT:
            raise InputOverflowError("the program is not reading its input")
        self._input += data
        self._flush_input()

    def resize(self, rows: int, cols: int) -> None:
        # Output drawn for the old size goes out before the size changes: what the PTY holds
        # now and what waits to be batched. A client that resizes its screen when the server
        # confirms the size then shows that output at the size it was drawn for.
        if self._reading:
            self._on_readable()
        self._flush()
        with contextlib.suppress(OSError):
            processes.set_winsize(self.fd, rows, cols)  # the kernel sends SIGWINCH
        if self.audience is not None:
            self.audience.resized(rows, cols)

    def _flush_input(self) -> None:
        while self._input and not self.closed:
            try:
                written = os.write(self.fd, self._input[:INPUT_WRITE_MAX])
            except BlockingIOError:
                break
            except OSError:
                self._input.clear()
                break
            del self._input[:written]
        want = bool(self._input) and not self.closed
        if want and not self._writing:
            self._loop.add_writer(self.fd, self._flush_input)
        elif not want and self._writing:
            self._loop.remove_writer(self.fd)
        self._writing = want

    # -- output ---------------------------------------------------------------------------
    def _update_reader(self) -> None:
        want = not self.closed and (self.client is None or self.outstanding < self._window)
        if want and not self._reading:
            self._loop.add_reader(self.fd, self._on_readable)
        elif not want and self._reading:
            self._loop.remove_reader(self.fd)
        self._reading = want

    def _on_readable(self) -> None:
        # The kernel hands out at most ~4 KiB per PTY read: read them all straight into the
        # shared scratch buffer and make one bytes object per wake-up, not one per read.
        buf = self._read_buffer
        budget = len(buf)
        if self.client is not None:
            budget = max(1, min(budget, self._window - self.outstanding))
        total, eof = 0, False
        while total < budget:
            try:
                n = os.readv(self.fd, (buf[total:budget],))
            except BlockingIOError:
                break
            except OSError:  # EIO: every process closed the PTY's other side
                eof = True
                break
            if not n:
                eof = True
                break
            total += n
            if n < SHORT_READ:  # drained (echo, a prompt): skip the read that finds EAGAIN
                break
        if total:
            self._metrics.bytes_out += total
            self._output(bytes(buf[:total]))
        if eof:
            self.close()
            return
        self._update_reader()

    def _output(self, data: bytes) -> None:
        self._scrollback.add(data)
        if self.audience is not None:
            self.audience.feed(data)
        if self.client is None:
            return
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len >= FRAME_MAX or (
            self._pending_len <= INTERACTIVE_MAX and self._flush_handle is None
        ):
            self._flush()  # a full frame, or small interactive output (echo): no waiting
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_later(COALESCE_S, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending or self.client is None:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_len = 0
        self._send(data)

    def _send(self, data: bytes) -> None:
        assert self.client is not None
        self._unacked_len += len(data)
        self.client.send_output(data)

    def _reset_flow(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending.clear()
        self._pending_len = 0
        self._unacked_len = 0

    # -- shutdown -------------------------------------------------------------------------
    def leader_exited(self) -> bool:
        return self.proc.poll() is not None

    def close(self, reason: str = "exited") -> asyncio.Task[None]:
        """Kill every process of the session (HUP -> TERM -> KILL), reap them, tell the client.

        `reason` (the first one given) is why: exited, restart, idle, admin, shutdown."""
        if self._closing is None:
            self.end_reason = reason
            self._closing = asyncio.ensure_future(self._terminate())  # runs from the next tick
            self._reset_flow()
            self._update_reader()  # `closed` is now true: stop watching the fd
            self._flush_input()
        return self._closing

    async def _terminate(self) -> None:
        if not await self._end(self.proc):
            log.error("session %s: processes survived SIGKILL", self.id)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.exit_code = self.proc.returncode
        client, self.client = self.client, None
        audience, self.audience = self.audience, None
        self._on_closed(self)
        if client is not None:
            client.session_ended(self.exit_code)
        if audience is not None:
            audience.session_ended(self.exit_code)
