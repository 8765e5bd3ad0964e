"""What the handlers share (the server's context), in a module of its own so that the guard
(auth.py) and the handlers can both name it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import LOGIN_MODES, Config
from .gate import Gate
from .login.logins import LoginStore
from .metrics import Metrics
from .model_proxy.credentials import ModelKeys
from .model_proxy.usage import Usage
from .model_status import ModelStatusPoller
from .sessions import SessionManager
from .shares import ShareRegistry
from .team.audit import AuditLog
from .wsupgrade import WebSocketHandler


@dataclass
class Context:
    """Everything the handlers share; injected through `initialize`, never global."""

    config: Config
    manager: SessionManager
    metrics: Metrics
    token: str | None  # None only with --no-auth
    static_dir: Path
    model_status: ModelStatusPoller
    shares: ShareRegistry  # read-only share links (share_handlers.py)
    gate: Gate = field(default_factory=Gate)  # connections that have not authenticated yet
    sockets: set[WebSocketHandler] = field(default_factory=set)  # open terminal sockets
    audit: AuditLog = field(default_factory=lambda: AuditLog(None))  # team/audit.py
    logins: LoginStore = field(default_factory=lambda: LoginStore(12 * 3600.0, 3600.0))
    usage: Usage = field(default_factory=Usage)  # each user's model usage (model_proxy/)
    model_keys: ModelKeys = field(default_factory=ModelKeys)  # per-user model keys

    @property
    def team(self) -> bool:
        """Many users (`--auth proxy|pam|oidc`); a handler's `current_user` is the request's
        user (auth.guard sets it), and only the session's owner reaches a session."""
        return self.config.team

    @property
    def login(self) -> bool:
        """Users log in on the login page and carry a login cookie (`--auth pam|oidc`)."""
        return self.config.auth in LOGIN_MODES

    @property
    def cookie_name(self) -> str:
        # Two servers on one host (say two compose stacks) must not overwrite each other's.
        return f"mixvllm_token_{self.config.public_port}"
