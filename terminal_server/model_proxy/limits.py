"""Who may send a model request now: the daily quota, the per-user concurrency limit and the
server-wide bound on requests to the model server. Each refusal is one line a user reads
(chat shows the message of an OpenAI-style error body)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..team.audit import AuditLog
from .usage import Usage


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str  # OpenAI's error code names, which clients know
    message: str


class ModelLimits:
    """The admission check and the count of requests running (one writer: the event loop)."""

    def __init__(self, config: Config, usage: Usage, audit: AuditLog) -> None:
        self.per_user = config.user_model_concurrency
        self.overall = config.model_concurrency
        self.usage = usage
        self.audit = audit
        self.running = 0  # every request to the model server, all users

    def admit(self, user: str, *, counted: bool) -> Refusal | None:
        """None if `user` may start a request now; `counted` ones (completions) are subject to
        the user's quota and concurrency, every one to the server-wide bound."""
        if counted and self.usage.over_quota(user):
            quota = self.usage.quota
            self.usage.refused(user)
            self.audit.record("quota_refused", user, quota=quota)
            return Refusal(
                429, "insufficient_quota",
                f"your daily model quota of {quota} tokens is used up; it renews at midnight "
                "(server time)",
            )  # fmt: skip
        if counted and self.usage.active(user) >= self.per_user:
            self.usage.refused(user)
            return Refusal(
                429, "rate_limit_exceeded",
                f"you already have {self.per_user} model requests running (the limit per "
                "user); wait for one to finish",
            )  # fmt: skip
        if self.running >= self.overall:
            return Refusal(
                503, "server_busy",
                f"the model pass-through is busy ({self.overall} requests running); retry "
                "in a moment",
            )  # fmt: skip
        return None

    def started(self, user: str, *, counted: bool) -> None:
        self.running += 1
        if counted:
            self.usage.started(user)

    def finished(self, user: str, used: tuple[int, int] | None) -> None:
        """`used`: (prompt, completion) tokens of a counted request; None for one that is not."""
        self.running -= 1
        if used is not None:
            self.usage.finished(user, *used)
