"""Why an OpenID Connect login failed: a short reason (the audit log's and the metric's) and
a detail for the server's log. Neither ever holds a token, a code or a secret."""

from __future__ import annotations


class OidcError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # e.g. "state", "signature", "audience", "group"
        self.detail = detail
