"""PTY sessions: spawn, flow-controlled output, bounded scrollback, escalating shutdown.

Output flow control: each attached client may hold at most `window` bytes of output it
has not acknowledged yet. When the window is full the session stops reading the PTY, the
kernel's PTY buffer fills, and the program blocks in write() instead of the server
buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import re
import secrets
import shlex
import signal
import struct
import subprocess
import termios
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from .config import ENV_PREFIX, Config
from .metrics import Metrics

log = logging.getLogger("mixvllm.terminal")

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
READ_CHUNK = 65536  # most bytes of typed input handed to one write()
READ_BUFFER = 256 * 1024  # most PTY output read in one wake-up
FRAME_MAX = 64 * 1024  # bytes per stdout frame
INTERACTIVE_MAX = 1024  # small output goes out at once (echo); bigger reads are batched
COALESCE_S = 0.002  # otherwise wait this long to batch reads into one frame
MAX_PENDING_INPUT = 4 * 1024 * 1024
# (signal, seconds to wait for the session's processes to go) — HUP first, like a hangup.
ESCALATION = ((signal.SIGHUP, 0.5), (signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0))


class SessionLimitError(RuntimeError):
    """The server already runs its maximum number of sessions."""


class SessionStartError(RuntimeError):
    """The session's program could not be started."""


class InputOverflowError(RuntimeError):
    """More typed input is queued than the program reads."""


class Client(Protocol):
    """What a session needs from an attached WebSocket."""

    def send_output(self, data: bytes) -> None: ...

    def session_ended(self, exit_code: int | None) -> None: ...


_SUBREAPER = {"on": False}


def become_subreaper() -> None:
    """Orphans from our sessions get reparented to this process, so we can reap them.

    Process-wide, so only the server's entry point calls it (not the library code tests use).
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        _SUBREAPER["on"] = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER


def reap_orphans(keep: set[int]) -> None:
    """As a subreaper, reap exited orphans (e.g. daemons started from a session) except `keep`."""
    if not _SUBREAPER["on"]:
        return
    me = str(os.getpid())
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in keep:
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z" and fields[1] == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry.name), os.WNOHANG)


def _session_members(sid: int) -> list[tuple[int, int, str]]:
    """(pid, ppid, state) of every process in kernel session `sid` (our PTY's session)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == sid:
            members.append((int(entry.name), int(fields[1]), fields[0]))
    return members


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _make_controlling_tty() -> None:  # runs in the child, after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def session_argv(config: Config, chat_args: Sequence[str]) -> list[str]:
    """The session's command: the shell, or `chat` first and then the shell.

    Chat arguments from the URL travel as positional parameters ("$@"), never inside the
    shell string.
    """
    if not config.autostart_chat:
        return list(config.shell)
    script = f'{shlex.join(config.chat_command)} "$@"; exec {shlex.join(config.shell)}'
    return ["/bin/sh", "-c", script, "mixvllm-session", *chat_args]


def session_env(session_id: str, config: Config) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(TERM="xterm-256color", COLORTERM="truecolor", MIXVLLM_SESSION=session_id)
    # After chat exits, `chat` must work in the shell too, venv activated or not.
    chat_dir = os.path.dirname(config.chat_command[0])
    path = env.get("PATH", os.defpath)
    if os.path.isabs(chat_dir) and chat_dir not in path.split(os.pathsep):
        env["PATH"] = chat_dir + os.pathsep + path
    return env


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
        manager: SessionManager,
    ) -> None:
        self.id = session_id
        self.proc = proc
        self.fd = fd
        self.client: Client | None = None
        self.detached_at: float | None = time.monotonic()
        self.exit_code: int | None = None
        self._loop = asyncio.get_running_loop()
        self._manager = manager
        self._metrics = metrics
        self._window = window
        self._scrollback: deque[bytes] = deque()
        self._scrollback_len = 0  # bytes kept, not counting the skipped head
        self._scrollback_skip = 0  # bytes of the oldest chunk that are already forgotten
        self._scrollback_limit = scrollback_limit
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._unacked: deque[int] = deque()
        self._unacked_len = 0
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
        replay = b"".join(self._scrollback)[self._scrollback_skip :]
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

    def ack(self, frames: int) -> bool:
        """Record that the client consumed `frames` stdout frames; False if it over-acks."""
        if self.closed:  # acks still in flight while the session shuts down
            return True
        if frames > len(self._unacked):
            return False
        for _ in range(frames):
            self._unacked_len -= self._unacked.popleft()
        self._update_reader()
        return True

    # -- input ----------------------------------------------------------------------------
    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        self._metrics.bytes_in += len(data)
        if len(self._input) + len(data) > MAX_PENDING_INPUT:
            raise InputOverflowError("the program is not reading its input")
        self._input += data
        self._flush_input()

    def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError):
            _set_winsize(self.fd, rows, cols)  # the kernel sends SIGWINCH

    def _flush_input(self) -> None:
        while self._input and not self.closed:
            try:
                written = os.write(self.fd, self._input[:READ_CHUNK])
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
        buf = self._manager.read_buffer
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
        if total:
            self._metrics.bytes_out += total
            self._output(bytes(buf[:total]))
        if eof:
            self.close()
            return
        self._update_reader()

    def _output(self, data: bytes) -> None:
        self._remember(data)
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
        self._unacked.append(len(data))
        self._unacked_len += len(data)
        self.client.send_output(data)

    def _remember(self, data: bytes) -> None:
        if self._scrollback_limit <= 0:
            return
        self._scrollback.append(data)
        self._scrollback_len += len(data)
        excess = self._scrollback_len - self._scrollback_limit
        while excess > 0:
            # Trim by moving an offset into the oldest chunk: slicing it would copy it all.
            head_left = len(self._scrollback[0]) - self._scrollback_skip
            if head_left <= excess:
                self._scrollback.popleft()
                self._scrollback_skip = 0
                self._scrollback_len -= head_left
                excess -= head_left
            else:
                self._scrollback_skip += excess
                self._scrollback_len -= excess
                excess = 0

    def _reset_flow(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending.clear()
        self._pending_len = 0
        self._unacked.clear()
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
        sid = self.proc.pid  # start_new_session: the leader's pid is the session id
        for sig, grace in ESCALATION:
            if not self._signal_members(sid, sig) or await self._wait_gone(sid, grace):
                break
        else:
            log.error("session %s: processes survived SIGKILL", self.id)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.exit_code = self.proc.returncode
        client, self.client = self.client, None
        self._manager._forget(self)
        if client is not None:
            client.session_ended(self.exit_code)

    async def _wait_gone(self, sid: int, grace: float) -> bool:
        deadline = time.monotonic() + grace
        delay = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
            if not self._reap(sid):
                return True
        return False

    def _signal_members(self, sid: int, sig: int) -> bool:
        """Signal every live process in the session; return whether any was alive."""
        alive = False
        for pid, _ppid, state in _session_members(sid):
            if state == "Z":
                continue
            alive = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                if sig != signal.SIGKILL:
                    os.kill(pid, signal.SIGCONT)  # stopped processes act on signals only now
        self._reap(sid)
        return alive

    def _reap(self, sid: int) -> bool:
        """Reap the leader and reparented orphans; return whether any process is left."""
        self.proc.poll()
        left = False
        me = os.getpid()
        for pid, ppid, state in _session_members(sid):
            if pid == self.proc.pid:
                left = left or self.proc.returncode is None
                continue
            if ppid == me and state == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                continue
            if state != "Z":
                left = True
        return left or self.proc.returncode is None


class SessionManager:
    """Owns every session: creation under the cap, lookup by id, idle cull, shutdown."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        # One scratch buffer for every session's PTY reads: they all run on this event loop.
        self.read_buffer = memoryview(bytearray(READ_BUFFER))
        self._cull_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._cull_task is None:
            self._cull_task = asyncio.ensure_future(self._cull_loop())

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or not SESSION_ID_RE.match(session_id):
            return None
        session = self.sessions.get(session_id)
        return session if session is not None and not session.closed else None

    def create(self, chat_args: Sequence[str] = (), rows: int = 24, cols: int = 80) -> Session:
        if len(self.sessions) >= self.config.max_sessions:
            raise SessionLimitError(
                f"session limit reached ({self.config.max_sessions}); close a tab and retry"
            )
        session_id = secrets.token_urlsafe(12)
        master, slave = os.openpty()
        try:
            _set_winsize(master, rows, cols)
            proc = subprocess.Popen(
                session_argv(self.config, chat_args),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=self.config.cwd if os.path.isdir(self.config.cwd) else "/",
                env=session_env(session_id, self.config),
                start_new_session=True,
                preexec_fn=_make_controlling_tty,  # noqa: PLW1509 - only an ioctl
            )
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(master)
            raise SessionStartError(f"cannot start the session: {exc}") from exc
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        session = Session(
            session_id,
            proc,
            master,
            scrollback_limit=self.config.scrollback_bytes,
            window=self.config.flow_window,
            metrics=self.metrics,
            manager=self,
        )
        self.sessions[session_id] = session
        self.metrics.sessions_started += 1
        log.info("session %s started (pid %d)", session_id, proc.pid)
        return session

    def _forget(self, session: Session) -> None:
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
        reap_orphans(keep={s.proc.pid for s in self.sessions.values()})

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
        tasks = [s.close() for s in list(self.sessions.values())]
        if tasks:
            await asyncio.gather(*tasks)
