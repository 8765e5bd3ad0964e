"""The sessions a server runs: creation under the caps (fork and exec in a worker thread),
lookup by id and owner, the idle cull, shutdown. One session's PTY, clients and flow control
are terminals.py's."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from . import processes, session_user
from .config import Config
from .exports import ChatExports
from .file_access import FileAccess
from .identity import OWNER
from .metrics import Metrics
from .reaper import Reaper
from .team.audit import AuditLog
from .team.limits import UserLimits
from .terminals import OUTPUT_READ_MAX, SESSION_ID_RE, Session

log = logging.getLogger("mixvllm.terminal")


class SessionLimitError(RuntimeError):
    """The server already runs its maximum number of sessions."""


class SessionManager:
    """Owns every session: creation under the cap, lookup by id, idle cull, shutdown."""

    def __init__(self, config: Config, metrics: Metrics, audit: AuditLog | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.audit = audit or AuditLog(None)
        # Team sessions as the users' own accounts (a root server) get the per-user limits.
        self.limits = UserLimits.build(
            config.user_max_processes,
            config.user_max_memory,
            may_switch=config.team and os.geteuid() == 0,
        )
        self.sessions: dict[str, Session] = {}
        self.user = session_user.lookup(config.session_user) if config.session_user else None
        self.exports = ChatExports(self.user)
        # One scratch buffer for every session's PTY reads: they all run on this event loop.
        self._read_buffer = memoryview(bytearray(OUTPUT_READ_MAX))
        self.reaper = Reaper()
        self.files = FileAccess(self.reaper)  # drops and downloads, as the session's user
        self._cull_task: asyncio.Task[None] | None = None
        # One thread forks and execs new sessions, one at a time, off the event loop.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="session-spawn")
        self._starting = 0  # sessions being spawned: they count against the cap
        self._starting_for: Counter[str] = Counter()  # the same, per owner (team mode's cap)
        self._started = asyncio.Event()  # set while none is being spawned
        self._started.set()
        # owner -> what their sessions learn about the model (team modes: the pass-through).
        self.model_env: Callable[[str], dict[str, str]] | None = None

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
        """The account `owner`'s sessions run as: their own in team modes when the server
        may switch users (root), else --session-user's, else the server's (None)."""
        if self.config.team and os.geteuid() == 0:
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
        team = self.config.team
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
                    self._spawn,
                    session_id,
                    chat_args,
                    rows,
                    cols,
                    user=user,
                    clean_env=team,
                    owner=owner,
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
        self.audit.record("session_start", owner, session=session_id, pid=proc.pid)
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
        owner: str = OWNER,
    ) -> tuple[subprocess.Popen[bytes], int]:  # runs in the spawner thread
        limits = self.limits.for_user(user.name) if user is not None and clean_env else None
        env = processes.session_env(
            session_id, self.config, self.exports.folder(session_id, user), user, clean=clean_env
        )
        if self.model_env is not None:
            env.update(self.model_env(owner))
        pid = None
        try:
            with self.reaper.spawning() as leaders:
                proc, master = processes.spawn(
                    processes.session_argv(self.config, chat_args),
                    env,
                    user.home if user else self.config.cwd,
                    rows,
                    cols,
                    user=user,
                    limits=limits,
                )  # fmt: skip
                pid = proc.pid
                leaders.add(pid)
        finally:
            if limits is not None:
                self.limits.spawned(pid, limits)
        return proc, master

    def _forget(self, session: Session) -> None:
        self.reaper.forget(session.proc.pid)
        self.exports.forget(session.id)
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            log.info("session %s ended (exit %s)", session.id, session.exit_code)
            self.audit.record(
                "session_end", session.owner, session=session.id,
                reason=session.end_reason or "exited", exit=session.exit_code,
            )  # fmt: skip

    def clients(self) -> int:
        return sum(1 for s in self.sessions.values() if s.client is not None)

    def cull(self) -> None:
        """Close sessions idle past the timeouts, and those whose leader has exited."""
        now = time.monotonic()
        quiet = self.config.user_idle_timeout
        for session in list(self.sessions.values()):
            if session.detached_at is not None and (
                now - session.detached_at >= self.config.idle_timeout
            ):
                log.info("session %s: no client for %.0f s, closing", session.id,
                         now - session.detached_at)  # fmt: skip
                session.close("idle")
            elif quiet and now - session.last_input >= quiet:
                log.info("session %s: no input for %.0f s, closing", session.id,
                         now - session.last_input)  # fmt: skip
                session.close("no input")
            elif session.leader_exited():
                session.close()
        self.reaper.reap_orphans()

    async def _cull_loop(self) -> None:
        timeouts = [self.config.idle_timeout, self.config.user_idle_timeout or math.inf]
        period = min(max(min(timeouts) / 4, 0.05), 5.0)
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
        tasks = [s.close("shutdown") for s in list(self.sessions.values())]
        if tasks:
            await asyncio.gather(*tasks)
        await self.reaper.stop()
        self._spawner.shutdown()
        self.exports.close()
