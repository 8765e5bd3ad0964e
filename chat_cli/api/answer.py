"""What came back for one request, built from its events; what the renderer shows."""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field

from chat_cli.api.events import (
    CallDelta,
    Done,
    Event,
    Finish,
    Reasoning,
    Sent,
    Text,
    UsageReport,
)

_SURROGATE = re.compile("[\ud800-\udfff]")
MIN_RATE_SPAN_S = 0.5  # a token rate needs at least this much generation time to mean much


def has_surrogates(text: str) -> bool:
    """Surrogates cannot be written as UTF-8: the trace of undecodable input."""
    return _SURROGATE.search(text) is not None


def repair(text: str) -> str:
    """Surrogate pairs joined into their character, lone surrogates replaced with U+FFFD."""
    if not has_surrogates(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool


def estimate_tokens(chars: int) -> int:
    """About four characters per token: only used when the server reports no usage."""
    return math.ceil(chars / 4)


@dataclass
class ToolCall:
    """One call the model asked for; a stream sends its id and name once, its arguments in
    pieces, and tells calls apart by `index`."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""

    def to_api(self) -> dict[str, object]:
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


@dataclass
class Answer:
    """What came back for one request. Only `apply` (and the named edits below it) write its
    fields: build one from the events of one request, in one thread."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    ended_at: float | None = None
    chunks: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    done: bool = False  # [DONE] seen
    calls: dict[int, ToolCall] = field(default_factory=dict)  # by the stream's index

    def apply(self, event: Event) -> None:
        if isinstance(event, Text | Reasoning):  # the hot path first
            if self.first_token_at is None:
                self.first_token_at = event.at
            (self.content if isinstance(event, Text) else self.reasoning).append(event.text)
            self.chunks += event.tokens
        elif isinstance(event, CallDelta):
            call = self.calls.setdefault(event.slot, ToolCall(event.slot))
            call.id = call.id or event.id
            call.name = call.name or event.name
            call.arguments += event.arguments
        elif isinstance(event, UsageReport):
            self.usage = Usage(event.prompt_tokens, event.completion_tokens, False)
        elif isinstance(event, Finish):
            self.finish_reason = event.reason
        elif isinstance(event, Sent):
            self.started = event.at
        elif isinstance(event, Done):
            self.done = True
        # ServerError: the client raises it; the answer keeps what came before

    def end(
        self, prompt_chars: int, at: float | None = None, *, prompt_tokens: int | None = None
    ) -> None:
        """Stamp the end; estimate the usage if the server sent none (`prompt_tokens`: a
        better estimate of the prompt's than its characters make)."""
        self.ended_at = time.monotonic() if at is None else at
        if self.usage is None:
            prompt = estimate_tokens(prompt_chars) if prompt_tokens is None else prompt_tokens
            self.usage = Usage(prompt, self.chunks, True)

    def drop_text_tail(self, chars: int) -> None:
        """Forget the last `chars` characters of the text (they were never drawn)."""
        if chars > 0:
            text = self.text
            self.content = [text[: max(0, len(text) - chars)]]

    def name_calls(self) -> list[ToolCall]:
        """The calls, each with an id (a server may send none: the result must name one)."""
        for call in self.calls.values():
            call.id = call.id or f"call_{os.urandom(6).hex()}"
        return self.tool_calls

    def drop_calls(self) -> None:
        """Forget the calls: the answer was cut short, they may not be whole."""
        self.calls.clear()

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [self.calls[i] for i in sorted(self.calls)]

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def elapsed(self) -> float:
        return (self.ended_at or time.monotonic()) - self.started

    @property
    def tokens_per_s(self) -> float | None:
        if self.usage is None or self.first_token_at is None:
            return None
        span = (self.ended_at or time.monotonic()) - self.first_token_at
        # A few tokens in a few milliseconds make a rate of thousands: no rate, rather.
        return self.usage.completion_tokens / span if span >= MIN_RATE_SPAN_S else None
