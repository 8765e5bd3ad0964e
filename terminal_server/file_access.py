"""The session's files touched as the session's user (session_files.py does the work): in
this process when the session runs as the server's own uid, else in a short helper process
started as the session's account, so the kernel checks what that account may do.

Both run off the event loop (an executor thread); the helper's pid is the reaper's to leave
alone while it runs (a subreaper's orphan round would otherwise reap it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from . import session_files
from .reaper import Reaper
from .session_files import Refused
from .session_user import SessionUser

P = ParamSpec("P")
T = TypeVar("T")
SOURCE = Path(session_files.__file__).read_text(encoding="utf-8")
HELPER_TIMEOUT_S = 60.0
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
HELPER_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}


class FileAccess:
    def __init__(self, reaper: Reaper) -> None:
        self._reaper = reaper
        self.uploads = 0  # bodies held by api/upload now (file_handlers.py, on the event loop)

    async def upload(
        self,
        user: SessionUser | None,
        pids: list[int],
        name: str,
        data: bytes,
        notice: tuple[str, str] | None,
    ) -> dict[str, str]:
        """session_files.upload as `user`; raises Refused."""
        if _as_self(user):
            return await _in_thread(session_files.upload, pids, name, data, notice)
        args = ["upload", ",".join(map(str, pids)), name, str(len(data)), *(notice or ())]
        out = await _in_thread(self._helper, user, args, data)
        result: dict[str, str] = json.loads(out)
        return result

    async def read(self, user: SessionUser | None, path: str, limit: int) -> bytes:
        """session_files.read_file as `user`; raises Refused."""
        if _as_self(user):
            return await _in_thread(session_files.read_file, path, limit)
        return await _in_thread(self._helper, user, ["read", path, str(limit)], b"")

    def _start(self, user: SessionUser, args: list[str]) -> subprocess.Popen[bytes]:
        for python in _interpreters():
            with self._reaper.spawning() as leaders:
                try:
                    proc = subprocess.Popen(
                        [python, "-I", "-S", "-c", SOURCE, *args],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        cwd="/", env=HELPER_ENV, user=user.uid, group=user.gid,
                        extra_groups=list(user.groups), start_new_session=True,
                    )  # fmt: skip
                except (PermissionError, FileNotFoundError):
                    continue  # not this one's to run
                leaders.add(proc.pid)
                return proc
        raise Refused(500, "no Python the session's user may run was found")

    def _helper(self, user: SessionUser | None, args: list[str], data: bytes) -> bytes:
        assert user is not None
        proc = self._start(user, args)
        try:
            out, err = proc.communicate(data, timeout=HELPER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise Refused(504, "the file took too long") from None
        finally:
            self._reaper.forget(proc.pid)
        if proc.returncode == 0:
            return out
        try:
            said = json.loads(err)
            raise Refused(int(said["status"]), str(said["error"]))
        except (ValueError, KeyError, TypeError):
            raise Refused(500, f"the helper failed (exit {proc.returncode})") from None


def _interpreters() -> list[str]:
    """The server's Python, then the system's: the session's account may not reach the
    server's (a venv in a folder of the server's own user)."""
    return list(dict.fromkeys([sys.executable, *SYSTEM_PYTHONS]))


def _as_self(user: SessionUser | None) -> bool:
    return user is None or user.uid == os.geteuid()


async def _in_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    call = functools.partial(function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(None, call)
