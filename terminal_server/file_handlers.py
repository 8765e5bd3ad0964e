"""`api/upload` (a file dropped on the page, into the folder of the session's foreground
process) and `api/download` (a file chat offered with `/download PATH`).

Only the session's owner reaches either (own_session: in team mode another user's session is
as good as none), with the owner's token or cookie and, for the upload, the page's Origin.
The upload's size is refused from its Content-Length before any of the body is read, and only
a few bodies are held at once. Files are created and read as the session's user
(file_access.py); the download names a ticket chat wrote, never a path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import unicodedata
import urllib.parse

from tornado import http1connection

from mixvllm_common.names import DOWNLOAD_TICKET_PREFIX, DROP_NOTICE_PREFIX, NOTICE_SUFFIX

from .auth import guard, refuse, same_origin
from .handlers import GuardedHandler
from .session_files import Refused
from .terminals import Session

log = logging.getLogger("mixvllm.terminal")

MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
MAX_UPLOADS_AT_ONCE = 4  # bodies held in memory at a time, all sessions together
UPLOAD_BODY_TIMEOUT_S = 120.0
MAX_NAME_BYTES = 255
TICKET = re.compile(r"[A-Za-z0-9_-]{16,64}")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a dropped file's name (None: it can)."""
    if not name or name in (".", "..") or "/" in name:
        return "a file name, without folders"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"a name of at most {MAX_NAME_BYTES} bytes"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        return "a name without control characters"
    return None


class _SessionFiles(GuardedHandler):
    session: Session | None = None

    def authorized(self) -> bool:
        if not guard(self, self.ctx):
            return False
        if self.request.method != "GET" and not same_origin(self.ctx, self.request):
            refuse(self, self.ctx, "origin")
            return False
        self.session = self.own_session()
        if self.session is None:
            self._answer(404, "No such session.", unread=self.request.method == "POST")
            return False
        return True

    def _answer(self, status: int, message: str, *, unread: bool = False) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if unread:  # a body we will not read may follow: the connection ends here
            self.set_header("Connection", "close")
        self.finish(message + "\n")


class UploadHandler(_SessionFiles):
    """`POST api/upload?session=ID&name=NAME`, the file's bytes as the body."""

    max_body_bytes = MAX_UPLOAD_BYTES

    def prepare(self) -> None:
        self._body = bytearray()
        self._counted = False
        if not self.authorized():
            return
        problem = name_problem(self.name)
        if problem is not None:
            self._answer(400, f"Give {problem}.", unread=True)
            return
        self.bound_body()
        if self._finished:
            return
        files = self.ctx.manager.files
        if files.uploads >= MAX_UPLOADS_AT_ONCE:
            self._answer(503, "Other files are being uploaded; try again in a moment.", unread=True)
            return
        files.uploads += 1
        self._counted = True
        connection = self.request.connection
        if isinstance(connection, http1connection.HTTP1Connection):
            connection.set_body_timeout(UPLOAD_BODY_TIMEOUT_S)

    @property
    def name(self) -> str:
        """The name as sent (Tornado's get_argument drops control characters silently)."""
        raw = self.request.query_arguments.get("name", [b""])[-1]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "\x00"  # refused by name_problem

    def data_received(self, chunk: bytes) -> None:
        self._body += chunk

    def on_finish(self) -> None:
        self._release()

    def on_connection_close(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.ctx.manager.files.uploads -= 1
        self._body = bytearray()

    async def post(self) -> None:
        session = self.session
        assert session is not None
        name = self.name
        manager = self.ctx.manager
        user = manager.user_for(session.owner)
        folder = manager.exports.path(session.id)
        notice_name = f"{DROP_NOTICE_PREFIX}{time.time_ns()}{NOTICE_SUFFIX}"
        notice = None if folder is None else (str(folder), notice_name)
        try:
            result = await manager.files.upload(
                user, foreground_pids(session), name, bytes(self._body), notice
            )
        except Refused as refused:
            self._answer(refused.status, refused.message)
            return
        size = len(self._body)
        log.info("session %s: a file of %d bytes dropped", session.id, size)
        self.ctx.audit.record("upload", self.current_user, session=session.id, size=size,
                              name=result["name"])  # fmt: skip
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({**result, "size": size}))


class DownloadHandler(_SessionFiles):
    """`GET api/download?session=ID&ticket=TICKET`: the file chat's `/download` named."""

    async def get(self) -> None:
        session = self.session
        assert session is not None
        ticket = self.get_query_argument("ticket", "")
        manager = self.ctx.manager
        raw = None
        if TICKET.fullmatch(ticket):
            name = f"{DOWNLOAD_TICKET_PREFIX}{ticket}{NOTICE_SUFFIX}"
            raw = manager.exports.read(session.id, name)
        try:
            path = str(json.loads(raw or b"")["path"])
        except (ValueError, KeyError, TypeError):
            self._answer(404, "No such download: ask chat again (/download PATH).")
            return
        try:
            data = await manager.files.read(
                manager.user_for(session.owner), path, MAX_DOWNLOAD_BYTES
            )
        except Refused as refused:
            self._answer(refused.status, refused.message)
            return
        self.ctx.audit.record("download", self.current_user, session=session.id,
                              size=len(data), path=path)  # fmt: skip
        filename = os.path.basename(path) or "download"
        quoted = urllib.parse.quote(filename, safe="")
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{quoted}")
        self.finish(data)


def foreground_pids(session: Session) -> list[int]:
    """The session's foreground process (its process group's leader), then its first."""
    pids = []
    with contextlib.suppress(OSError):
        pids.append(os.tcgetpgrp(session.fd))
    return [*pids, session.proc.pid] if session.proc.pid not in pids else pids
