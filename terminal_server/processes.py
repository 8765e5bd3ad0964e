"""Session processes: the command, its environment, and its start on a new PTY.

Ending them is reaper.py's job.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shlex
import signal
import struct
import subprocess
import termios
from collections.abc import Sequence
from pathlib import Path

from mixvllm_common.defaults import MODEL_SERVER_URL_ENV
from mixvllm_common.names import EXPORT_ENV, SESSION_ENV

from .config import ENV_PREFIX, Config
from .session_user import SessionUser
from .team.limits import ChildLimits

PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child must not load it
_RESETTABLE_SIGNALS = sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
# Signals 32 and 33 are the C library's own: its sigaction() refuses them, the kernel does not,
# and an ignored one survives exec. All zero is SIG_DFL in the kernel's struct sigaction.
_SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}.get(os.uname().machine)
_LIBC_SIGNALS = (32, 33)
_DEFAULT_ACTION = (ctypes.c_ulong * 4)()


# What a team user's session keeps of the server's environment (with LC_*): nothing secret.
CLEAN_ENV = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", MODEL_SERVER_URL_ENV})
LOGIN_ENV = frozenset({"HOME", "USER", "LOGNAME", "SHELL"})
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


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
    *,
    clean: bool = False,
) -> dict[str, str]:
    """The session's environment: the server's without its own settings or, `clean` (a team
    user's session), only what a login gives plus the model's address: no keys, no token."""
    if clean:
        keep = CLEAN_ENV if user is not None else CLEAN_ENV | LOGIN_ENV  # None: the server's
        env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
        env.setdefault("PATH", DEFAULT_PATH)
    else:
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


def _default_signals() -> None:  # runs in the child
    """Every disposition SIG_DFL and an empty mask, whatever the server inherited (as login
    does): exec keeps ignored and blocked signals, and a server started from a background job
    of a script ignores SIGINT, so Ctrl-C would reach no program in its sessions."""
    for sig in _RESETTABLE_SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
    if _SYS_RT_SIGACTION is not None:
        for libc_sig in _LIBC_SIGNALS:
            _LIBC.syscall(_SYS_RT_SIGACTION, libc_sig, ctypes.byref(_DEFAULT_ACTION), None, 8)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _session_child() -> None:  # runs in the child, after setsid()
    _default_signals()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the PTY becomes the session's controlling tty


def _drop_ambient_capabilities() -> None:
    """A non-root server's ambient capabilities would survive the uid change and exec."""
    _LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def _session_user_child() -> None:  # runs in the child, after setsid() and the uid change
    _session_child()
    _drop_ambient_capabilities()


def spawn(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: str,
    rows: int,
    cols: int,
    *,
    user: SessionUser | None = None,
    limits: ChildLimits | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `argv` leading a new session on a new PTY; return it and the non-blocking master fd.

    A session as `user` enters its working directory as that user, after the uid change (as
    login does): a 0700 home needs no privilege of the server's (compose gives it none to
    read others' files). `limits` (team/limits.py) are applied then too, before exec."""
    folder = cwd if os.path.isdir(cwd) else "/"

    def user_child() -> None:  # runs in the child
        _session_user_child()
        try:
            os.chdir(folder)
        except OSError:
            os.chdir("/")
        if limits is not None:
            limits.apply()

    child = user_child if user else _session_child
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
            cwd="/" if user else folder,
            env=env,
            start_new_session=True,
            preexec_fn=child,  # noqa: PLW1509 - signals, an ioctl, a prctl, setrlimit
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=list(user.groups) if user else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(master)
        raise SessionStartError(f"cannot start the session: {exc}") from exc
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return proc, master


def become_subreaper() -> bool:
    """Have orphans from our sessions reparented to this process; return whether it worked."""
    with contextlib.suppress(OSError, AttributeError):
        return bool(_LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    return False
