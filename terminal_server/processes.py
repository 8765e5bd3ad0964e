"""Session processes: spawn on a PTY, find them in /proc, kill with escalation, reap.

Each session's program leads its own kernel session (setsid), so "every process of the
session" is every process whose /proc stat names that session id: background jobs and
nohup'ed children included, wherever they were reparented.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shlex
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mixvllm_common.names import EXPORT_ENV, SESSION_ENV

from .config import ENV_PREFIX, Config
from .session_user import SessionUser

# (signal, seconds to wait for the session's processes to go) — HUP first, like a hangup.
ESCALATION = ((signal.SIGHUP, 0.5), (signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0))
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child must not load it


class SessionStartError(RuntimeError):
    """The session's program could not be started."""


def session_argv(config: Config, chat_args: Sequence[str]) -> list[str]:
    """The session's command: the shell, or `chat` first and then the shell.

    Chat arguments from the URL travel as positional parameters ("$@"), never inside the
    shell string.
    """
    if not config.autostart_chat:
        return list(config.shell)
    script = f'{shlex.join(config.chat_command)} "$@"; exec {shlex.join(config.shell)}'
    return ["/bin/sh", "-c", script, "mixvllm-session", *chat_args]


def session_env(
    session_id: str,
    config: Config,
    chat_export: Path | None = None,
    user: SessionUser | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    if user is not None:
        env.update(user.env())
    env.update({"TERM": "xterm-256color", "COLORTERM": "truecolor", SESSION_ENV: session_id})
    env.pop(EXPORT_ENV, None)  # inherited from a session this server runs in: not its folder
    if chat_export is not None:
        env[EXPORT_ENV] = str(chat_export)
    # After chat exits, `chat` must work in the shell too, venv activated or not.
    chat_dir = os.path.dirname(config.chat_command[0])
    path = env.get("PATH", os.defpath)
    if os.path.isabs(chat_dir) and chat_dir not in path.split(os.pathsep):
        env["PATH"] = chat_dir + os.pathsep + path
    return env


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, cols


def _make_controlling_tty() -> None:  # runs in the child, after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _drop_ambient_capabilities() -> None:
    """A non-root server's ambient capabilities would survive the uid change and exec."""
    _LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def _session_user_child() -> None:  # runs in the child, after setsid() and the uid change
    _make_controlling_tty()
    _drop_ambient_capabilities()


def spawn(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: str,
    rows: int,
    cols: int,
    *,
    user: SessionUser | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `argv` leading a new session on a new PTY; return it and the non-blocking master fd."""
    master, slave = os.openpty()
    try:
        set_winsize(master, rows, cols)
        if user is not None:
            os.fchown(slave, user.uid, -1)  # programs that reopen their tty (tmux) can
        proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd if os.path.isdir(cwd) else "/",
            env=env,
            start_new_session=True,
            preexec_fn=_session_user_child if user else _make_controlling_tty,  # noqa: PLW1509 - an ioctl and a prctl
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(master)
        raise SessionStartError(f"cannot start the session: {exc}") from exc
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return proc, master


def _processes() -> Iterator[tuple[int, int, str, int]]:
    """(pid, ppid, state, session id) of every process in /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces
        yield int(entry.name), int(fields[1]), fields[0], int(fields[3])


def session_members(sid: int) -> list[tuple[int, int, str]]:
    """(pid, ppid, state) of every process in kernel session `sid` (our PTY's session)."""
    return [(pid, ppid, state) for pid, ppid, state, s in _processes() if s == sid]


def become_subreaper() -> bool:
    """Have orphans from our sessions reparented to this process; return whether it worked."""
    with contextlib.suppress(OSError, AttributeError):
        return bool(_LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    return False


def reap_orphans(keep: set[int]) -> None:
    """Reap our exited children (e.g. daemons started from a session) except `keep`."""
    me = os.getpid()
    for pid, ppid, state, _sid in _processes():
        if state == "Z" and ppid == me and pid not in keep:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


async def terminate(leader: subprocess.Popen[bytes]) -> bool:
    """Kill every process of the leader's session (HUP -> TERM -> KILL) and reap them.

    Return False if some survived SIGKILL.
    """
    sid = leader.pid  # start_new_session: the leader's pid is the session id
    for sig, grace in ESCALATION:
        if not _signal_members(leader, sid, sig) or await _wait_gone(leader, sid, grace):
            return True
    return False


async def _wait_gone(leader: subprocess.Popen[bytes], sid: int, grace: float) -> bool:
    deadline = time.monotonic() + grace
    delay = 0.005
    while time.monotonic() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
        if not _reap(leader, sid):
            return True
    return False


def _signal_members(leader: subprocess.Popen[bytes], sid: int, sig: int) -> bool:
    """Signal every live process in the session; return whether any was alive."""
    alive = False
    for pid, _ppid, state in session_members(sid):
        if state == "Z":
            continue
        alive = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            if sig != signal.SIGKILL:
                os.kill(pid, signal.SIGCONT)  # stopped processes act on signals only now
    _reap(leader, sid)
    return alive


def _reap(leader: subprocess.Popen[bytes], sid: int) -> bool:
    """Reap the leader and reparented orphans; return whether any process is left."""
    leader.poll()
    left = False
    me = os.getpid()
    for pid, ppid, state in session_members(sid):
        if pid == leader.pid:
            left = left or leader.returncode is None
            continue
        if ppid == me and state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            continue
        if state != "Z":
            left = True
    return left or leader.returncode is None
