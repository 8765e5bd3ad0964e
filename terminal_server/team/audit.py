"""The audit log: one JSON object per line for what an admin asks about later (logins, session
starts and ends, shares, exports, quota refusals).

One writer: every record is written from the event loop's thread, appended with one `write`
to a file opened owner-only. Values are data: JSON escapes control characters, so a user name
or a reason a client sent cannot become a terminal escape in `tail -f`; long values are cut.
Never pass a secret (token, password, cookie, key) as a field.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("mixvllm.terminal")

MAX_VALUE_CHARS = 256  # a client-chosen string (a name, a path) is cut to this
Value = str | int | float | bool | None


class AuditLog:
    """Appends events to `path`; with `path` None it records nothing (token mode's default)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._failed = False

    def record(self, event: str, user: str | None, **fields: Value) -> None:
        if self.path is None:
            return
        entry: dict[str, Value] = {"time": round(time.time(), 3), "event": event, "user": user}
        for name, value in fields.items():
            long = isinstance(value, str) and len(value) > MAX_VALUE_CHARS
            entry[name] = (
                f"{value[:MAX_VALUE_CHARS]}…" if isinstance(value, str) and long else value
            )
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n"
        try:
            if self._fd is None:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._fd = os.open(
                    self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
            os.write(self._fd, line.encode("ascii"))
        except OSError as exc:
            if not self._failed:  # one line, not one per event
                log.error("audit log %s not writable: %s", self.path, exc.strerror)
            self._failed = True
        else:
            self._failed = False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
