"""The session's chat export folders: one owner-only folder per session that `chat` keeps up
to date (the files of mixvllm_common.names, as /save writes them; chat_cli/export.py), read by
`api/chat` (chat_export.py).

Its path reaches the session in names.EXPORT_ENV. Nothing travels through the terminal stream,
so a share link's viewer cannot read it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from .session_user import SessionUser, hand_over_folder

MAX_BYTES = 64 * 1024 * 1024
# No link followed, no wait on a FIFO's writer, no terminal taken on.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class ChatExports:
    """One owner-only folder per session, under one temporary folder made on first use."""

    def __init__(self, user: SessionUser | None = None) -> None:
        self._root: Path | None = None
        self._user = user  # --session-user: chmod the root at once (tests check its mode)
        self._owners: dict[str, int] = {}  # session id -> the uid its files must have

    def folder(self, session_id: str, user: SessionUser | None = None) -> Path:
        """The session's folder, made for `user` (the session's account; None: ours)."""
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="mixvllm-chats-"))  # mode 0700
        if user is not None or self._user is not None:
            self._root.chmod(0o711)  # a session user reaches its folder, lists none
        path = self._root / session_id
        path.mkdir(mode=0o700)
        if user is not None:
            hand_over_folder(path, user)
        self._owners[session_id] = os.geteuid() if user is None else user.uid
        return path

    def path(self, session_id: str) -> Path | None:
        """The live session's folder (None: it has none, or it has ended)."""
        if self._root is None or session_id not in self._owners:
            return None
        return self._root / session_id

    def read(self, session_id: str, name: str) -> bytes | None:
        """The export's bytes; None when chat has not written one (or it is too big).

        The folder is the session's: whatever is there is the session's to choose, and the
        server reads it only as the session's own file. Opened without following a link,
        then checked on the descriptor (no window for a swap): a regular file, the session
        user's, with no other name (a hard link to someone else's file has two).
        """
        owner = self._owners.get(session_id)
        if self._root is None or owner is None:
            return None
        try:
            folder = os.open(self._root / session_id, _OPEN_FLAGS | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=folder)
        except OSError:
            return None
        finally:
            os.close(folder)
        with open(fd, "rb") as file:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != owner or info.st_nlink != 1:
                return None
            try:
                data = file.read(MAX_BYTES + 1)  # bounded, whatever size fstat said
            except OSError:
                return None
        return data if len(data) <= MAX_BYTES else None

    def forget(self, session_id: str) -> None:
        """The session has ended: its files are no one's to read (on the event loop)."""
        self._owners.pop(session_id, None)

    def remove(self, session_id: str) -> None:  # in the reaper's worker
        if self._root is not None:
            shutil.rmtree(self._root / session_id, ignore_errors=True)

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
