"""Each user's model usage: tokens today and in total, requests, requests running now.

One writer: the pass-through (handler.py) on the event loop. Today's counts reset at local
midnight; both counts are kept in a small owner-only JSON file in the state directory, so a
restart resets neither the quota nor the totals. The admin page reads `snapshot()`, /metrics
reads `metric_lines()`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

log = logging.getLogger("mixvllm.terminal")

PERSISTED = ("prompt_today", "completion_today", "prompt_total", "completion_total", "requests")


def local_day() -> str:
    return datetime.date.today().isoformat()  # local time: the quota resets at local midnight


@dataclass(frozen=True)
class UserUsage:
    prompt_today: int = 0
    completion_today: int = 0
    prompt_total: int = 0
    completion_total: int = 0
    requests: int = 0  # answered (or cut) requests, in total
    active: int = 0  # requests running now
    refused: int = 0  # refused for the quota or the concurrency limit (since start)
    quota: int | None = None  # tokens a day; None: no quota

    @property
    def tokens_today(self) -> int:
        return self.prompt_today + self.completion_today


@dataclass
class _Entry:
    prompt_today: int = 0
    completion_today: int = 0
    prompt_total: int = 0
    completion_total: int = 0
    requests: int = 0
    active: int = 0
    refused: int = 0


class Usage:
    """Per-user counters, persisted to `path` (None: kept in memory only)."""

    def __init__(
        self,
        path: Path | None = None,
        quota: int | None = None,
        today: Callable[[], str] = local_day,
    ) -> None:
        self.path = path
        self.quota = quota or None
        self._today = today
        self._day = today()
        self._users: dict[str, _Entry] = {}
        self._save_failed = False
        self._load()

    # -- what the pass-through calls ------------------------------------------------------
    def started(self, user: str) -> None:
        self._entry(user).active += 1

    def finished(self, user: str, prompt: int, completion: int) -> None:
        """A request ended (answered, failed or cut); count what the model said it used."""
        entry = self._entry(user)
        entry.active = max(0, entry.active - 1)
        entry.requests += 1
        prompt, completion = max(0, prompt), max(0, completion)
        entry.prompt_today += prompt
        entry.completion_today += completion
        entry.prompt_total += prompt
        entry.completion_total += completion
        self._save()

    def refused(self, user: str) -> None:
        self._entry(user).refused += 1

    def active(self, user: str) -> int:
        entry = self._users.get(user)
        return 0 if entry is None else entry.active

    def over_quota(self, user: str) -> bool:
        if self.quota is None:
            return False
        self._roll_day()
        entry = self._users.get(user)
        return entry is not None and entry.prompt_today + entry.completion_today >= self.quota

    # -- what readers call ----------------------------------------------------------------
    def snapshot(self) -> Mapping[str, UserUsage]:
        """user -> their usage now (a copy: later requests do not change it)."""
        self._roll_day()
        return MappingProxyType(
            {
                name: UserUsage(**asdict(entry), quota=self.quota)
                for name, entry in sorted(self._users.items())
            }
        )

    # -- inside -------------------------------------------------------------------------
    def _entry(self, user: str) -> _Entry:
        self._roll_day()
        entry = self._users.get(user)
        if entry is None:
            entry = self._users[user] = _Entry()
        return entry

    def _roll_day(self) -> None:
        day = self._today()
        if day == self._day:
            return
        self._day = day
        for entry in self._users.values():
            entry.prompt_today = entry.completion_today = 0
        self._save()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            users = data["users"]
            same_day = data["day"] == self._day
            for name, counts in users.items():
                entry = _Entry(**{k: int(counts.get(k, 0)) for k in PERSISTED})
                if not same_day:
                    entry.prompt_today = entry.completion_today = 0
                self._users[str(name)] = entry
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Start from zero rather than refuse to start; say so once.
            log.error("model usage file %s unreadable (%s): counting from zero", self.path, exc)
            self._users.clear()

    def _save(self) -> None:
        if self.path is None:
            return
        users = {
            name: {k: getattr(entry, k) for k in PERSISTED} for name, entry in self._users.items()
        }
        data = json.dumps({"day": self._day, "users": users}, separators=(",", ":"))
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._save_failed:  # one line, not one per request
                log.error("model usage file %s not writable: %s", self.path, exc.strerror)
            self._save_failed = True
        else:
            self._save_failed = False


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metric_lines(snapshot: Mapping[str, UserUsage]) -> list[str]:
    """Prometheus series with a `user` label (team modes only: one series per account)."""
    lines = [
        "# HELP mixvllm_terminal_model_tokens_total Model tokens through the pass-through, "
        "by user and kind.",
        "# TYPE mixvllm_terminal_model_tokens_total counter",
    ]
    for user, u in snapshot.items():
        name = _label(user)
        lines.append(
            f'mixvllm_terminal_model_tokens_total{{user="{name}",kind="prompt"}} {u.prompt_total}'
        )
        lines.append(
            f'mixvllm_terminal_model_tokens_total{{user="{name}",kind="completion"}} '
            f"{u.completion_total}"
        )
    series = (
        ("model_requests_total", "counter", "Model requests through the pass-through.", "requests"),
        ("model_refused_total", "counter", "Model requests refused (quota, concurrency).",
         "refused"),
        ("model_active_requests", "gauge", "Model requests running now.", "active"),
        ("model_tokens_today", "gauge", "Prompt and completion tokens since local midnight.",
         "tokens_today"),
    )  # fmt: skip
    for metric, kind, help_, attr in series:
        lines += [f"# HELP mixvllm_terminal_{metric} {help_}",
                  f"# TYPE mixvllm_terminal_{metric} {kind}"]  # fmt: skip
        for user, u in snapshot.items():
            lines.append(f'mixvllm_terminal_{metric}{{user="{_label(user)}"}} {getattr(u, attr)}')
    return lines
