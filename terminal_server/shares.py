"""Read-only share links: one revocable token per shared session, and each viewer's own buffer.

A viewer must never slow the session's owner down: the session hands viewers what it reads
and never stops reading for them. Each viewer may hold one flow window of output it has not
acknowledged plus a backlog of at most the same size; past that its backlog is dropped, and
once it has consumed what it holds it is resynchronised from the scrollback (a terminal
reset, then the replay), as a reattaching owner is.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Protocol

from .redact import MASK, filtering_logs
from .terminals import FRAME_MAX, Session

RESET = b"\x1bc"  # RIS: the viewer's terminal starts over before a resync's replay
MAX_VIEWERS = 16  # per share: each one holds up to two flow windows of output


class ViewerSink(Protocol):
    """What a share needs from a viewer's WebSocket."""

    def send_output(self, data: bytes) -> None: ...

    def resized(self, rows: int, cols: int) -> None: ...

    def share_ended(self) -> None: ...

    def session_ended(self, exit_code: int | None) -> None: ...


class Viewer:
    """One viewer's flow control: a window of unacknowledged frames, then a bounded backlog."""

    def __init__(self, sink: ViewerSink, window: int) -> None:
        self.sink = sink
        self._window = window
        self._unacked: deque[int] = deque()
        self._unacked_len = 0
        self._backlog: list[bytes] = []
        self._backlog_len = 0
        self.lagging = False  # its backlog was dropped: resync once it has caught up
        self.resyncs = 0

    @property
    def held(self) -> int:
        """Bytes the server keeps or has in flight for this viewer."""
        return self._unacked_len + self._backlog_len

    def feed(self, data: bytes) -> None:
        if self.lagging:
            return
        if not self._backlog and self._unacked_len < self._window:
            self._send(data)
            return
        self._backlog.append(data)
        self._backlog_len += len(data)
        if self._backlog_len > self._window:
            self._backlog.clear()
            self._backlog_len = 0
            self.lagging = True

    def ack(self, frames: int, replay: Callable[[], bytes]) -> bool:
        """Record consumed frames and send what waits; False if it over-acks."""
        if frames > len(self._unacked):
            return False
        for _ in range(frames):
            self._unacked_len -= self._unacked.popleft()
        if self._backlog and self._unacked_len < self._window:
            data = b"".join(self._backlog)
            self._backlog.clear()
            self._backlog_len = 0
            self._send(data)
        elif self.lagging and not self._unacked:
            self.lagging = False
            self.resyncs += 1
            self._send(RESET + replay())
        return True

    def _send(self, data: bytes) -> None:
        for start in range(0, len(data), FRAME_MAX):
            chunk = data[start : start + FRAME_MAX]
            self._unacked.append(len(chunk))
            self._unacked_len += len(chunk)
            self.sink.send_output(chunk)


class Share:
    """A session's share link and its viewers; the session's `audience` while it lasts."""

    def __init__(
        self,
        session: Session,
        token: str,
        *,
        window: int,
        on_change: Callable[[Share], None],
        on_end: Callable[[Share], None],
    ) -> None:
        self.session = session
        self.token = token
        self.ended = False
        self._window = window
        self._viewers: dict[ViewerSink, Viewer] = {}
        self._on_change = on_change
        self._on_end = on_end

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def viewer(self, sink: ViewerSink) -> Viewer | None:
        return self._viewers.get(sink)

    def add(self, sink: ViewerSink) -> Viewer:
        viewer = Viewer(sink, self._window)
        self._viewers[sink] = viewer
        viewer.feed(self.session.replay())
        self._on_change(self)
        return viewer

    def remove(self, sink: ViewerSink) -> None:
        if self._viewers.pop(sink, None) is not None and not self.ended:
            self._on_change(self)

    def ack(self, sink: ViewerSink, frames: int) -> bool:
        viewer = self._viewers.get(sink)
        return viewer is None or viewer.ack(frames, self.session.replay)

    def revoke(self) -> None:
        """End the share: the token opens nothing any more and every viewer is closed."""
        if self._end():
            for sink in self._take_viewers():
                sink.share_ended()
            self._on_change(self)

    # -- terminals.Audience -------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        for viewer in self._viewers.values():
            viewer.feed(data)

    def resized(self, rows: int, cols: int) -> None:
        for sink in self._viewers:
            sink.resized(rows, cols)

    def session_ended(self, exit_code: int | None) -> None:
        self._end()
        for sink in self._take_viewers():
            sink.session_ended(exit_code)

    def _take_viewers(self) -> list[ViewerSink]:
        sinks = list(self._viewers)
        self._viewers.clear()
        return sinks

    def _end(self) -> bool:
        if self.ended:
            return False
        self.ended = True
        if self.session.audience is self:
            self.session.audience = None
        self._on_end(self)
        return True


def _digest(token: str) -> bytes:
    # Looked up by hash: the time a lookup takes says nothing about how close a guess was.
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class ShareRegistry:
    """Share tokens -> live shares; a share ends when revoked or when its session ends."""

    def __init__(self, window: int, on_change: Callable[[Share], None]) -> None:
        self._window = window
        self._on_change = on_change
        self._shares: dict[bytes, Share] = {}

    def of(self, session: Session) -> Share | None:
        share = session.audience
        return share if isinstance(share, Share) and not share.ended else None

    def create(self, session: Session) -> Share:
        """The session's share, made now with a fresh token if it has none."""
        share = self.of(session)
        if share is None:
            token = secrets.token_urlsafe(24)
            share = Share(
                session, token, window=self._window, on_change=self._on_change, on_end=self._drop
            )
            session.audience = share
            self._shares[_digest(token)] = share
            self._on_change(share)
        return share

    def find(self, token: str | None) -> Share | None:
        if not token:
            return None
        share = self._shares.get(_digest(token))
        if share is None or share.ended or share.session.closed:
            return None
        return share

    def __len__(self) -> int:
        return len(self._shares)

    def _drop(self, share: Share) -> None:
        self._shares.pop(_digest(share.token), None)

    def kept_out_of_logs(self) -> contextlib.AbstractContextManager[None]:
        """Blank live share tokens out of every log record, as redact.py does the server's."""
        return filtering_logs(_ShareTokenFilter(self))

    def tokens(self) -> list[str]:
        return [share.token for share in self._shares.values()]


class _ShareTokenFilter(logging.Filter):
    # Share tokens are URL-safe base64: the raw form is every form a log line can show.
    def __init__(self, registry: ShareRegistry) -> None:
        super().__init__()
        self._registry = registry

    def filter(self, record: logging.LogRecord) -> bool:
        tokens = self._registry.tokens()
        if tokens:
            message = record.getMessage()
            redacted = message
            for token in tokens:
                redacted = redacted.replace(token, MASK)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True
