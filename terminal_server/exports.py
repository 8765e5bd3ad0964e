"""The session's chat export folders: one owner-only folder per session that `chat` keeps up
to date (the files of mixvllm_common.names, as /save writes them; chat_cli/export.py), read by
`api/chat` (chat_export.py).

Its path reaches the session in names.EXPORT_ENV. Nothing travels through the terminal stream,
so a share link's viewer cannot read it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from .session_user import SessionUser, hand_over_folder

MAX_BYTES = 64 * 1024 * 1024


class ChatExports:
    """One owner-only folder per session, under one temporary folder made on first use."""

    def __init__(self, user: SessionUser | None = None) -> None:
        self._root: Path | None = None
        self._user = user

    def folder(self, session_id: str) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="mixvllm-chats-"))  # mode 0700
            if self._user is not None:  # the session user reaches its folder, lists none
                self._root.chmod(0o711)
        path = self._root / session_id
        path.mkdir(mode=0o700)
        if self._user is not None:
            hand_over_folder(path, self._user)
        return path

    def read(self, session_id: str, name: str) -> bytes | None:
        """The export's bytes; None when chat has not written one (or it is too big)."""
        if self._root is None:
            return None
        path = self._root / session_id / name
        with contextlib.suppress(OSError):
            if path.stat().st_size <= MAX_BYTES:
                return path.read_bytes()
        return None

    def remove(self, session_id: str) -> None:
        if self._root is not None:
            shutil.rmtree(self._root / session_id, ignore_errors=True)

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
