"""How much of the model's context the conversation takes, and whether the next request fits.

The last answer's usage counts the request it answered and the answer exactly. What came
since (the new question, tool results) is estimated high, at three characters a token (most
text runs nearer four), plus the chat template's markers around each message; when that
says a request would not fit, the server's tokenizer counts the new text, if it has one, so
that an estimate alone never refuses what fits. The request must leave room for the answer:
max_tokens, or when that is the server's default, an eighth of the context (up to 1,024).

Only the session writes here: it measures after each answer and asks before each request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chat_cli.api import context
from chat_cli.api.answer import Answer

CHARS_PER_TOKEN = 3  # high for English (about 4), so the estimate errs on the safe side
MESSAGE_TOKENS = 8  # the template's role markers and separators around one message
DEFAULT_ANSWER_ROOM = 1024
# vLLM: "maximum context length is 2048 tokens"; llama-cpp-python: "context window of 2048".
_LIMIT_IN_ERROR = re.compile(r"context (?:length is|window of|size is|size of) (\d+)", re.I)

Messages = list[dict[str, Any]]


def text_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def message_chars(message: dict[str, Any]) -> int:
    content = message.get("content")
    chars = len(content) if isinstance(content, str) else len(str(content or ""))
    for call in message.get("tool_calls") or ():
        chars += len(str(call))
    return chars


@dataclass(frozen=True)
class Shortfall:
    """A request that would not fit: `needed` tokens (with the answer's room) of `limit`."""

    needed: int
    limit: int
    room: int


@dataclass(frozen=True)
class _Measured:
    """`messages` (as a request sends them) take `tokens`."""

    messages: Messages
    tokens: int


class ContextWindow:
    def __init__(
        self,
        model: str,
        lookup: Callable[[str], context.Reported],
        counter: Callable[[str, str], int | None],
        configured: int | None = None,
    ) -> None:
        """`lookup(model)` asks the server for the context's length (once, when first
        needed); `counter(model, text)` counts a text's tokens with the server's tokenizer
        (None: it cannot); `configured`: the context_length setting, for a server that
        tells nothing exact."""
        self.model = model
        self._lookup = lookup
        self._counter = counter
        self._configured = configured
        self._limit: int | None = None
        self._looked_up = False
        self._measured: _Measured | None = None
        self._counted: _Measured | None = None  # the last request the tokenizer counted

    @classmethod
    def of_server(
        cls, base_url: str, api_key: str | None, model: str, configured: int | None
    ) -> ContextWindow:
        def lookup(name: str) -> context.Reported:
            return context.reported(base_url, api_key, name)

        return cls(model, lookup, context.Tokenizer(base_url, api_key).count, configured)

    @property
    def limit(self) -> int | None:
        if not self._looked_up:
            self._looked_up = True
            found = self._lookup(self.model)
            self._limit = found.exact or self._configured or found.trained
        return self._limit

    def model_changed(self, model: str) -> None:
        self.model = model
        self._looked_up = False
        self._measured = self._counted = None

    def learn(self, error: str) -> None:
        """A context-length error names the limit (vLLM, llama-cpp-python): keep it when
        the server reported none."""
        found = _LIMIT_IN_ERROR.search(error)
        if found and self.limit is None:
            self._limit = int(found.group(1))

    def measured(self, messages: Messages, answer: Answer) -> None:
        """After an answer: `messages`, the conversation with the answer, take what the
        answer's usage says (exactly, when the server reported it)."""
        usage = answer.usage
        if usage is None or usage.estimated:
            self._measured = None
            return
        self._measured = _Measured(messages, usage.prompt_tokens + usage.completion_tokens)

    def used(self, messages: Messages) -> int:
        """The tokens `messages` take: measured where they begin with the last exchange."""
        counted = self._counted
        if counted is not None and counted.messages == messages:
            return counted.tokens
        base, rest = self._split(messages)
        return base + sum(text_tokens(message_chars(m)) + MESSAGE_TOKENS for m in rest)

    def _split(self, messages: Messages) -> tuple[int, Messages]:
        """The measured tokens `messages` begin with, and the messages after them."""
        measured = self._measured
        if measured is not None and _starts_with(messages, measured.messages):
            return measured.tokens, messages[len(measured.messages) :]
        return 0, messages

    def room(self, max_tokens: int | None) -> int:
        limit = self.limit or 0
        return max_tokens if max_tokens is not None else min(DEFAULT_ANSWER_ROOM, limit // 8)

    def needed(self, messages: Messages, max_tokens: int | None, within: float) -> int:
        """The tokens a request of `messages` needs with the answer's room: estimated, and
        counted by the server's tokenizer (when it has one) if the estimate is over `within`."""
        room = self.room(max_tokens)
        estimate = self.used(messages) + room
        if estimate <= within:
            return estimate
        counted = self._count_new(messages)
        return estimate if counted is None else counted + room

    def shortfall(self, messages: Messages, max_tokens: int | None) -> Shortfall | None:
        """None when `messages` and the answer's room fit the context (or it is unknown)."""
        limit = self.limit
        if limit is None:
            return None
        needed = self.needed(messages, max_tokens, limit)
        return None if needed <= limit else Shortfall(needed, limit, self.room(max_tokens))

    def _count_new(self, messages: Messages) -> int | None:
        """`used`, with the new messages counted by the server's tokenizer."""
        base, rest = self._split(messages)
        text = "\n".join(str(m.get("content") or "") for m in rest)
        counted = self._counter(self.model, text) if text else 0
        if counted is None:
            return None
        self._counted = _Measured(messages, base + counted + MESSAGE_TOKENS * len(rest))
        return self._counted.tokens


def _starts_with(messages: Messages, prefix: Messages) -> bool:
    return len(messages) >= len(prefix) and messages[: len(prefix)] == prefix
