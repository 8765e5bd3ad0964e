"""PTY sessions: flow-controlled output, bounded scrollback, clients; the manager of them all.

Output flow control: each attached client may hold at most `window` bytes of output it
has not acknowledged yet. When the window is full the session stops reading the PTY, the
kernel's PTY buffer fills, and the program blocks in write() instead of the server
buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from . import processes, session_user
from .config import Config
from .exports import ChatExports
from .identity import OWNER
from .metrics import Metrics
from .reaper import Reaper
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


class SessionLimitError(RuntimeError):
    """The server already runs its maximum number of sessions."""


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

    def close(self) -> asyncio.Task[None]:
        """Kill every process of the session (HUP -> TERM -> KILL), reap them, tell the client."""
        if self._closing is None:
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


class SessionManager:
    """Owns every session: creation under the cap, lookup by id, idle cull, shutdown."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        self.user = session_user.lookup(config.session_user) if config.session_user else None
        self.exports = ChatExports(self.user)
        # One scratch buffer for every session's PTY reads: they all run on this event loop.
        self._read_buffer = memoryview(bytearray(OUTPUT_READ_MAX))
        self.reaper = Reaper()
        self._cull_task: asyncio.Task[None] | None = None
        # One thread forks and execs new sessions, one at a time, off the event loop.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="session-spawn")
        self._starting = 0  # sessions being spawned: they count against the cap
        self._starting_for: Counter[str] = Counter()  # the same, per owner (team mode's cap)
        self._started = asyncio.Event()  # set while none is being spawned
        self._started.set()

    def become_subreaper(self) -> None:
        """Adopt and reap orphans of our sessions (daemons started from a shell, say).

        Process-wide, so only the server's entry point calls it (not the library code tests use).
        """
        self.reaper.orphans = processes.become_subreaper()

    def start(self) -> None:
        if self._cull_task is None:
            self._cull_task = asyncio.ensure_future(self._cull_loop())

    def get(self, session_id: str | None, owner: str = OWNER) -> Session | None:
        """The live session of that id if `owner` owns it; another user's is not found."""
        if not session_id or not SESSION_ID_RE.match(session_id):
            return None
        session = self.sessions.get(session_id)
        if session is None or session.closed or session.owner != owner:
            return None
        return session

    def user_for(self, owner: str) -> session_user.SessionUser | None:
        """The account `owner`'s sessions run as: their own with --auth proxy when the server
        may switch users (root), else --session-user's, else the server's (None)."""
        if self.config.auth == "proxy" and os.geteuid() == 0:
            return session_user.login(owner, self.config.min_uid)
        return self.user

    async def create(
        self, chat_args: Sequence[str] = (), rows: int = 24, cols: int = 80, owner: str = OWNER
    ) -> Session:
        """Start a session. Its fork and exec (and export folder) happen in a worker thread:
        on the loop they stopped every other session for 10-30 ms per new tab under load.
        Raises SessionLimitError, SessionUserError or SessionStartError."""
        if len(self.sessions) + self._starting >= self.config.max_sessions:
            raise SessionLimitError(
                f"session limit reached ({self.config.max_sessions}); close a tab and retry"
            )
        team = self.config.auth == "proxy"
        cap = self.config.max_user_sessions
        owned = sum(s.owner == owner for s in self.sessions.values())
        if team and owned + self._starting_for[owner] >= cap:
            raise SessionLimitError(f"you have {cap} sessions already; close one and retry")
        user = self.user_for(owner)
        session_id = secrets.token_urlsafe(12)
        self._starting += 1
        self._starting_for[owner] += 1
        self._started.clear()
        try:
            proc, master = await asyncio.get_running_loop().run_in_executor(
                self._spawner,
                functools.partial(
                    self._spawn, session_id, chat_args, rows, cols, user=user, clean_env=team
                ),
            )
        finally:
            self._starting -= 1
            self._starting_for[owner] -= 1
            if not self._starting_for[owner]:
                del self._starting_for[owner]
            if not self._starting:
                self._started.set()
        session = Session(
            session_id,
            proc,
            master,
            scrollback_limit=self.config.scrollback_bytes,
            window=self.config.flow_window,
            metrics=self.metrics,
            read_buffer=self._read_buffer,
            # Its folder goes in the worker too: a remove can take milliseconds per session.
            end=functools.partial(
                self.reaper.end, then=functools.partial(self.exports.remove, session_id)
            ),
            on_closed=self._forget,
            owner=owner,
        )
        self.sessions[session_id] = session
        self.metrics.sessions_started += 1
        log.info("session %s of %s started (pid %d)", session_id, owner, proc.pid)
        return session

    def _spawn(
        self,
        session_id: str,
        chat_args: Sequence[str],
        rows: int,
        cols: int,
        *,
        user: session_user.SessionUser | None,
        clean_env: bool,
    ) -> tuple[subprocess.Popen[bytes], int]:  # runs in the spawner thread
        with self.reaper.spawning() as leaders:
            proc, master = processes.spawn(
                processes.session_argv(self.config, chat_args),
                processes.session_env(
                    session_id, self.config, self.exports.folder(session_id, user), user,
                    clean=clean_env,
                ),
                user.home if user else self.config.cwd,
                rows,
                cols,
                user=user,
            )  # fmt: skip
            leaders.add(proc.pid)
        return proc, master

    def _forget(self, session: Session) -> None:
        self.reaper.forget(session.proc.pid)
        self.exports.forget(session.id)
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            log.info("session %s ended (exit %s)", session.id, session.exit_code)

    def clients(self) -> int:
        return sum(1 for s in self.sessions.values() if s.client is not None)

    def cull(self) -> None:
        """Close sessions idle past the timeout, and those whose leader has exited."""
        now = time.monotonic()
        for session in list(self.sessions.values()):
            idle = session.detached_at is not None and (
                now - session.detached_at >= self.config.idle_timeout
            )
            if idle:
                log.info(
                    "session %s: no client for %.0f s, closing",
                    session.id,
                    now - (session.detached_at or now),
                )
            if idle or session.leader_exited():
                session.close()
        self.reaper.reap_orphans()

    async def _cull_loop(self) -> None:
        period = min(max(self.config.idle_timeout / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            self.cull()

    async def shutdown(self) -> None:
        if self._cull_task is not None:
            self._cull_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cull_task
            self._cull_task = None
        await self._started.wait()  # a session being spawned registers, then ends with the rest
        tasks = [s.close() for s in list(self.sessions.values())]
        if tasks:
            await asyncio.gather(*tasks)
        await self.reaper.stop()
        self._spawner.shutdown()
        self.exports.close()
