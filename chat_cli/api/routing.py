"""The key a router in front of several model servers keeps one conversation on one replica by.

vLLM's router (`--policy consistent_hash`) hashes `X-Session-ID` first. The key is a digest of
the conversation's opening (everything up to and including the first user message): stable
across turns, `/retry` and a reloaded chat, so the replica that holds the conversation's
prefix in its cache gets every turn; it changes only when that prefix changes (a new chat, a
new system prompt), which is when the cached prefix is of no use anyway. A digest, not the
text: the header may be logged where the messages are not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

SESSION_HEADER = "X-Session-ID"


def session_headers(params: Mapping[str, Any]) -> dict[str, str]:
    """{SESSION_HEADER: key} for a chat or completions request body; {} when it has no text."""
    messages = params.get("messages")
    if isinstance(messages, list):
        end = next(
            (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
            len(messages) - 1,
        )
        opening: object = messages[: end + 1]
    else:
        # A raw completions prompt grows at its end each turn: its start is the conversation.
        opening = str(params.get("prompt") or "")[:512]
    if not opening:
        return {}
    text = json.dumps(opening, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return {SESSION_HEADER: hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]}
