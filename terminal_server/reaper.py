"""Ending sessions' processes, off the event loop.

Each session's program leads its own kernel session (setsid), so "every process of the
session" is every process whose /proc stat names that session id: background jobs and
nohup'ed children included, wherever they were reparented. No system call lists them: it
takes a read of every process's stat file, milliseconds with hundreds of sessions.

Done per ending session on the event loop, 100 sessions ending together cost 201 scans and
froze every other session's echo for 1.7 s. Here one worker thread owns the escalation
(HUP -> TERM -> KILL) of every session being ended: one scan per round serves all of them,
and the loop only hands over a leader and awaits a future. A round follows each new request
and each leader's exit (its pidfd turns readable), and otherwise a poll that slows from 5 to
100 ms, for what a leader leaves behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import NamedTuple

log = logging.getLogger("mixvllm.terminal")

# (signal, seconds to wait for the session's processes to go) — HUP first, like a hangup.
ESCALATION = ((signal.SIGHUP, 0.5), (signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0))
FIRST_POLL_S, LAST_POLL_S = 0.005, 0.1  # a round's wait grows from 5 ms to 100 ms


class Member(NamedTuple):
    pid: int
    ppid: int
    state: str  # "Z": exited, not reaped yet


def _fields(pid: str, count: int) -> list[bytes] | None:
    """The first `count` fields of /proc/<pid>/stat after the command name, or None if gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = raw[raw.rfind(b")") + 2 :].split(maxsplit=count)  # the name may hold spaces
    return fields if len(fields) >= count else None


def _stat(pid: str) -> tuple[int, int, str, int] | None:
    """(pid, ppid, state, session id) of one process, or None if it is gone."""
    fields = _fields(pid, 4)
    if fields is None:
        return None
    return int(pid), int(fields[1]), fields[0].decode(), int(fields[3])


def scan() -> Iterator[tuple[int, int, str, int]]:
    """(pid, ppid, state, session id) of every process in /proc."""
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(name)) is not None:
            yield stat


class Usage(NamedTuple):
    processes: int
    cpu_seconds: float  # user + system, with that of the children they reaped
    rss_bytes: int


def usage_by_session(sids: Collection[int]) -> dict[int, Usage]:
    """What the processes of each kernel session in `sids` use: one scan of /proc, for the
    admin page (run it off the event loop, like every scan here)."""
    ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    found: dict[int, list[int]] = {sid: [0, 0, 0] for sid in sids}
    for name in os.listdir("/proc"):
        fields = _fields(name, 23) if name.isdigit() else None
        if fields is None or (totals := found.get(int(fields[3]))) is None:
            continue
        totals[0] += 1
        totals[1] += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        totals[2] += int(fields[21])  # rss, pages
    return {sid: Usage(n, cpu / ticks, rss * page) for sid, (n, cpu, rss) in found.items()}


def session_members(sid: int) -> list[Member]:
    """Every process in kernel session `sid` (a session's PTY, led by pid `sid`)."""
    return [Member(pid, ppid, state) for pid, ppid, state, s in scan() if s == sid]


@dataclass
class _Ending:
    leader: subprocess.Popen[bytes]
    done: asyncio.Future[bool]
    then: Callable[[], None] | None
    stage: int = 0  # the next step of ESCALATION
    deadline: float = 0.0  # when the next step is due
    pidfd: int | None = None  # readable once the leader has exited


@dataclass(frozen=True)
class _Stop:
    done: asyncio.Future[bool]


_ROUND = object()  # a round with nothing new: reap orphans


class Reaper:
    """Ends sessions (kills every process of each, reaps them) in a worker thread.

    With `orphans` (the server is a subreaper) it also reaps our exited children that left
    their sessions, never a session's leader: those belong to their Popen.
    """

    def __init__(self, *, orphans: bool = False) -> None:
        self.orphans = orphans
        self._worker: _Worker | None = None  # started by the first request, ended by stop()
        # Spawning and reaping an orphan exclude each other, so that a leader that exits at
        # once is never reaped as an orphan before it is known.
        self._lock = threading.Lock()
        self._leaders: set[int] = set()

    @contextlib.contextmanager
    def spawning(self) -> Iterator[set[int]]:
        """Hold off orphan reaping; add the new leader's pid to the set yielded."""
        with self._lock:
            yield self._leaders

    def forget(self, pid: int) -> None:
        """The leader `pid` is reaped (by its Popen): the pid may be a stranger's now."""
        with self._lock:
            self._leaders.discard(pid)

    async def end(
        self, leader: subprocess.Popen[bytes], *, then: Callable[[], None] | None = None
    ) -> bool:
        """Kill every process of the leader's session (HUP -> TERM -> KILL) and reap them;
        then call `then` in the worker (clean-up of files, which can block for a while).

        Return False if some survived SIGKILL.
        """
        ending = _Ending(leader, asyncio.get_running_loop().create_future(), then)
        self._send(ending)
        return await ending.done

    def reap_orphans(self) -> None:
        if self.orphans:
            self._send(_ROUND)

    async def stop(self) -> None:
        """Finish what is under way and end the thread."""
        worker, self._worker = self._worker, None  # a later request starts another
        if worker is not None:
            stop = _Stop(asyncio.get_running_loop().create_future())
            worker.send(stop)
            await stop.done
            worker.join()

    def _send(self, request: object) -> None:
        if self._worker is None:
            self._worker = _Worker(self)
        self._worker.send(request)

    def reap_zombies(self, zombies: list[int]) -> None:  # called by the worker
        if not self.orphans:
            return
        with self._lock:
            for pid in zombies:
                if pid not in self._leaders:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)


class _Worker:
    """One thread and its state; only `send` and `join` are called from elsewhere."""

    def __init__(self, reaper: Reaper) -> None:
        self._reaper = reaper
        self._requests: deque[object] = deque()
        self._woken, self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ending: dict[int, _Ending] = {}  # by leader pid, which is the session id
        self._pidfds: dict[int, _Ending] = {}
        self._poller = select.poll()
        self._poller.register(self._woken, select.POLLIN)
        self._thread = threading.Thread(target=self._run, name="session-reaper", daemon=True)
        self._thread.start()

    def send(self, request: object) -> None:
        self._requests.append(request)
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._wake, b"\0")

    def join(self) -> None:
        self._thread.join()  # it returns right after answering stop
        os.close(self._wake)

    def _run(self) -> None:
        wait = FIRST_POLL_S
        stopping: asyncio.Future[bool] | None = None
        while True:
            events = self._poller.poll(wait * 1000 if self._ending else None)
            wait = FIRST_POLL_S if events else min(wait * 2, LAST_POLL_S)
            for fd, _ in events:
                if fd == self._woken:
                    with contextlib.suppress(BlockingIOError):
                        os.read(fd, 4096)
                else:
                    self._close_pidfd(fd)  # its leader exited: this round reaps it
            while self._requests:  # everything asked by now goes into this round
                request = self._requests.popleft()
                if isinstance(request, _Ending):
                    self._start(request)
                elif isinstance(request, _Stop):
                    stopping = request.done
            try:
                self._round()
            except Exception:  # the thread must live on, and nobody wait forever on it
                log.exception("ending sessions failed")
                for sid in list(self._ending):
                    self._finish(sid, False)
            if stopping is not None and not self._ending:
                os.close(self._woken)
                _resolve(stopping, True)
                return

    def _start(self, ending: _Ending) -> None:
        self._ending[ending.leader.pid] = ending
        try:
            fd = os.pidfd_open(ending.leader.pid)
        except OSError:  # reaped already, or a kernel without pidfds: the polls find it
            return
        ending.pidfd = fd
        self._pidfds[fd] = ending
        self._poller.register(fd, select.POLLIN)

    def _close_pidfd(self, fd: int) -> None:
        self._pidfds.pop(fd).pidfd = None
        self._poller.unregister(fd)
        os.close(fd)

    def _round(self) -> None:
        if not self._ending and not self._reaper.orphans:
            return
        members: dict[int, list[Member]] = {sid: [] for sid in self._ending}
        zombies: list[int] = []  # our exited children outside the sessions being ended
        me = os.getpid()
        for pid, ppid, state, sid in scan():
            if sid in members:
                members[sid].append(Member(pid, ppid, state))
            elif ppid == me and state == "Z":
                zombies.append(pid)
        now = time.monotonic()
        for sid, ending in list(self._ending.items()):
            alive = _reap(ending.leader, members[sid])
            if not alive:
                self._finish(sid, True)
            elif now >= ending.deadline:
                if ending.stage == len(ESCALATION):
                    self._finish(sid, False)
                    continue
                sig, grace = ESCALATION[ending.stage]
                ending.stage += 1
                ending.deadline = now + grace
                for pid in alive:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                        if sig != signal.SIGKILL:
                            os.kill(pid, signal.SIGCONT)  # stopped ones act on signals only now
        self._reaper.reap_zombies(zombies)

    def _finish(self, sid: int, ok: bool) -> None:
        ending = self._ending.pop(sid)
        if ending.pidfd is not None:
            self._close_pidfd(ending.pidfd)
        if ending.then is not None:
            try:
                ending.then()
            except Exception:
                log.exception("cleaning up after a session failed")
        _resolve(ending.done, ok)


def _reap(leader: subprocess.Popen[bytes], members: list[Member]) -> list[int]:
    """Reap the leader and the session's exited orphans; return the pids still alive."""
    leader.poll()
    me = os.getpid()
    alive = []
    for m in members:
        if m.pid == leader.pid:
            continue
        if m.state != "Z":
            alive.append(m.pid)
        elif m.ppid == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(m.pid, os.WNOHANG)
    if leader.returncode is None:
        alive.append(leader.pid)
    return alive


def _resolve(done: asyncio.Future[bool], ok: bool) -> None:
    def resolve() -> None:
        if not done.done():
            done.set_result(ok)

    with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
        done.get_loop().call_soon_threadsafe(resolve)
