"""MCP server processes: how chat starts them, and how it makes sure they end with it.

The SDK starts a stdio server in a session of its own (so a closed terminal's SIGHUP does not
reach it) and stops it when its context ends. Two gaps remain, both closed here:

- exec keeps ignored signals and the signal mask: a chat started with SIGINT ignored or
  blocked (nohup, some service managers) would hand that on to every server. Each server is
  therefore started through a few lines of Python (`launch`) that restore default
  dispositions and an empty mask, as login and sshd do, then exec the server.
- a chat that dies without closing its servers (SIGKILL, a crash) would leave them to PID 1.
  The same lines ask the kernel to send the server SIGTERM when the thread that started it
  ends (PR_SET_PDEATHSIG, Linux), and `end` stops them from chat: TERM to each server's
  process group, KILL after a grace period, and a check that they are gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

GRACE_S = 2.0  # after TERM, before KILL
POLL_S = 0.02

# Run as `python -I -S -c _LAUNCH CHAT_PID COMMAND ARGS...`: stdlib only, no site, ~20 ms.
_LAUNCH = """\
import os, signal, sys
for sig in signal.valid_signals():
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    # 32 and 33 are the C library's own: only the kernel's rt_sigaction resets them.
    nr = {"x86_64": 13, "aarch64": 134}.get(os.uname().machine)
    for sig in (32, 33) if nr else ():
        libc.syscall(nr, sig, ctypes.byref((ctypes.c_ulong * 4)()), None, 8)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)  # chat is already gone: do not start
signal.pthread_sigmask(signal.SIG_SETMASK, ())
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as err:
    sys.exit(f"cannot start {sys.argv[2]}: {err.strerror}")
"""


def launch(command: str, args: Sequence[str]) -> tuple[str, list[str]]:
    """The command line that starts `command ARGS` with clean signal state, tied to chat."""
    if sys.platform != "linux":
        return command, list(args)
    return sys.executable, ["-I", "-S", "-c", _LAUNCH, str(os.getpid()), command, *args]


def started_by(thread_id: int) -> list[int]:
    """The processes that thread `thread_id` of chat started and that have not been reaped
    (each server leads its own process group: the SDK starts it in a new session)."""
    try:
        text = Path(f"/proc/self/task/{thread_id}/children").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split()]


def _exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(groups: Sequence[int], signum: int) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)


def wait_gone(groups: Sequence[int], seconds: float, done: Callable[[], bool]) -> bool:
    """Wait until no process of `groups` is left and `done()`; False after `seconds`."""
    deadline = time.monotonic() + seconds
    while any(_exists(g) for g in groups) or not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def end(groups: Sequence[int], done: Callable[[], bool], grace: float = GRACE_S) -> list[int]:
    """TERM each process group, KILL what is left after `grace`; the groups that outlived
    even that (none, unless the kernel cannot deliver)."""
    left = [g for g in groups if _exists(g)]
    if not left:
        return []
    _signal(left, signal.SIGTERM)
    if wait_gone(left, grace, done):
        return []
    _signal(left, signal.SIGKILL)
    wait_gone(left, grace, done)
    return [g for g in left if _exists(g)]
