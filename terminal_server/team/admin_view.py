"""What the admin page shows: who is logged in, each user's sessions (age, idle time, CPU and
memory of their processes), token usage. Built as plain JSON-ready dicts.

The CPU and memory come from one scan of /proc (reaper.usage_by_session), which takes
milliseconds with hundreds of processes: it runs in a worker thread, one scan at a time, and
answers given within `FRESH_S` of a scan reuse it, so a room of open admin pages costs one scan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from ..reaper import Usage, usage_by_session
from ..terminals import Session

FRESH_S = 1.0


class ProcessScan:
    """The latest /proc scan of the sessions' processes, refreshed at most once per FRESH_S."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._at = -FRESH_S
        self._usage: dict[int, Usage] = {}

    async def usage(self, sids: Iterable[int]) -> dict[int, Usage]:
        wanted = set(sids)
        async with self._lock:
            if time.monotonic() - self._at >= FRESH_S or not wanted <= self._usage.keys():
                loop = asyncio.get_running_loop()
                self._usage = await loop.run_in_executor(None, usage_by_session, wanted)
                self._at = time.monotonic()
            return self._usage


def session_row(
    session: Session, usage: Usage | None, viewers: int | None, now: float
) -> dict[str, Any]:
    return {
        "id": session.id,
        "user": session.owner,
        "age_s": round(now - session.started_at, 1),
        "idle_s": round(now - session.last_input, 1),
        "attached": session.client is not None,
        "shared": viewers is not None,
        "viewers": viewers or 0,
        "processes": usage.processes if usage else 0,
        "cpu_s": round(usage.cpu_seconds, 2) if usage else 0.0,
        "rss_bytes": usage.rss_bytes if usage else 0,
    }


def usage_json(value: object) -> dict[str, Any] | None:
    """One user's token usage (model_proxy's UserUsage, a dataclass) as JSON."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: v for k, v in asdict(value).items() if isinstance(v, int | float | None)}
    return None


def build(
    sessions: Iterable[tuple[Session, int | None]],
    usage: Mapping[int, Usage],
    logged_in: Mapping[str, int],
    tokens: Mapping[str, object],
    you: str,
) -> dict[str, Any]:
    """The admin API's answer. `sessions`: each with its share's viewer count (None: not
    shared); `logged_in`: user -> logins; `tokens`: user -> model usage."""
    now = time.monotonic()
    rows = [session_row(s, usage.get(s.proc.pid), v, now) for s, v in sessions]
    rows.sort(key=lambda r: (r["user"], -r["age_s"]))
    names = sorted(set(logged_in) | {r["user"] for r in rows} | set(tokens))
    users = []
    for name in names:
        mine = [r for r in rows if r["user"] == name]
        users.append({
            "name": name,
            "logins": logged_in.get(name, 0),
            "sessions": len(mine),
            "cpu_s": round(sum(r["cpu_s"] for r in mine), 2),
            "rss_bytes": sum(r["rss_bytes"] for r in mine),
            "tokens": usage_json(tokens.get(name)),
        })  # fmt: skip
    return {"you": you, "users": users, "sessions": rows, "usage_counted": bool(tokens)}
