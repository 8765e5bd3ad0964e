"""The browser terminal's file round trip, chat's side (the server's: terminal_server/
file_handlers.py). Both ways go through the session's folder (names.EXPORT_ENV):

- a file dropped on the page lands in chat's folder and the server leaves a notice there;
  `Watcher` picks it up while chat waits at its prompt, and the REPL says
  `dropped: NAME (SIZE) — /file NAME to attach` above it;
- `/download PATH` leaves a ticket naming the file and prints the page's OSC with the ticket
  (not the path): the page shows a link, and the server serves only what a ticket names. A
  program (or a model: chat shows its escapes, never sends them) can print the OSC, but not
  make a ticket for a file the user did not name.

Standard library only: it runs under the session's user like the rest of chat.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from chat_cli.attach import human_size
from chat_cli.errors import ChatError
from mixvllm_common.names import (
    DOWNLOAD_TICKET_PREFIX,
    DROP_NOTICE_PREFIX,
    EXPORT_ENV,
    NOTICE_SUFFIX,
    PAGE_OSC,
)

POLL_S = 0.25
MAX_NOTICE_BYTES = 4096
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # the server's limit (file_handlers.MAX_DOWNLOAD_BYTES)
DOWNLOAD = "download;"  # OSC PAGE_OSC "download;TICKET;BASE64(NAME)" (static/terminal.js)
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def folder(env: Mapping[str, str]) -> Path | None:
    value = env.get(EXPORT_ENV)
    return Path(value) if value and Path(value).is_dir() else None


def notice_line(notice: dict[str, object], cwd: str) -> str:
    """What chat says about a dropped file; the name is the page user's, shown by say()."""
    name = str(notice.get("name", ""))
    where = str(notice.get("dir", cwd))
    size = notice.get("size")
    path = name if os.path.realpath(where) == os.path.realpath(cwd) else os.path.join(where, name)
    shown = f" ({human_size(size)})" if isinstance(size, int) else ""
    return f"dropped: {name}{shown} \N{EM DASH} /file {shlex.quote(path)} to attach"


class Watcher:
    """A thread that hands each new drop notice to `show` (False: not now, keep it)."""

    def __init__(self, where: Path, show: Callable[[str], bool]) -> None:
        self.where = where
        self.show = show
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chat-drops", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                names = sorted(
                    n.name
                    for n in os.scandir(self.where)
                    if n.name.startswith(DROP_NOTICE_PREFIX) and n.name.endswith(NOTICE_SUFFIX)
                )
            except OSError:
                continue
            for name in names:
                if not self._handle(self.where / name):
                    break

    def _handle(self, path: Path) -> bool:
        """Show one notice and remove it; False when it must wait."""
        try:
            fd = os.open(path, _READ)
        except OSError:
            return True
        try:
            info = os.fstat(fd)
            data = os.read(fd, MAX_NOTICE_BYTES) if stat.S_ISREG(info.st_mode) else b""
        except OSError:
            return True
        finally:
            os.close(fd)
        try:
            notice = json.loads(data)
        except ValueError:
            notice = None
        # One from before this chat started is old news: dropped while no chat ran.
        fresh = isinstance(notice, dict) and info.st_mtime >= self.started - 1.0
        if fresh and not self.show(notice_line(notice, os.getcwd())):
            return False
        path.unlink(missing_ok=True)
        return True


def offer(arg: str, env: Mapping[str, str], out_is_page: bool) -> tuple[str, str]:
    """`/download PATH`: (the line chat says, the OSC that gives the page its link)."""
    where = folder(env)
    if where is None or not out_is_page:
        raise ChatError("/download works in the browser terminal only (mixvllm-terminal)")
    try:
        words = shlex.split(arg)
    except ValueError:
        words = []
    if len(words) != 1:
        raise ChatError("usage: /download PATH (one file of this session; quote spaces)")
    arg = words[0]
    path = Path(os.path.abspath(Path(arg).expanduser()))
    try:
        info = path.stat()
    except OSError as err:
        raise ChatError(f"cannot offer {arg}: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ChatError(f"cannot offer {arg}: not a regular file")
    if info.st_size > MAX_DOWNLOAD_BYTES:
        raise ChatError(
            f"cannot offer {arg}: it is {human_size(info.st_size)}, over the "
            f"{human_size(MAX_DOWNLOAD_BYTES)} download limit"
        )
    if not os.access(path, os.R_OK):
        raise ChatError(f"cannot offer {arg}: it is not readable")
    import secrets  # noqa: PLC0415 (only for /download)

    ticket = secrets.token_urlsafe(18)
    _write_ticket(where, ticket, {"path": str(path)})
    name = base64.b64encode(path.name.encode("utf-8", "surrogateescape")).decode("ascii")
    osc = f"\x1b]{PAGE_OSC};{DOWNLOAD}{ticket};{name}\x07"
    size = human_size(info.st_size)
    return f"download: {path.name} ({size}) \N{EM DASH} the page shows its link", osc


def _write_ticket(where: Path, ticket: str, body: dict[str, str]) -> None:
    # A setgid folder is a --session-user's: its group is the server's, which reads it.
    mode = 0o640 if where.stat().st_mode & stat.S_ISGID else 0o600
    path = where / f"{DOWNLOAD_TICKET_PREFIX}{ticket}{NOTICE_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(body))  # ASCII: a name that is not UTF-8 survives
    except OSError as err:
        raise ChatError(f"cannot offer the file: {err.strerror or err}") from None
