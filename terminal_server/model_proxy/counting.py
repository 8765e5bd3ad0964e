"""What an answer used, read from the answer itself as it passes through.

A streamed answer's usage comes in its own event near the end (`stream_options.include_usage`,
which the pass-through asks for); a whole answer's in its `usage`. A stream without one (cut
before it, or from a server that ignores the option: llama-cpp-python) is estimated the way
`chat` estimates it: a token per text event (what vLLM and llama.cpp send) and a prompt token
per four characters of the messages, so leaving early does not make an answer free.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

EVENT_END = re.compile(rb"\r?\n\r?\n")  # sse_starlette ends lines with \r\n, vLLM with \n
MAX_EVENT_BYTES = 1024 * 1024  # one event longer than this is passed on without a look
MAX_WHOLE_BYTES = 16 * 1024 * 1024  # a whole answer larger than this is counted by nothing


def _usage_of(data: Any) -> tuple[int, int] | None:
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


class StreamCounter:
    """Reads an SSE answer's events; `feed` returns what to pass on (all of it, except the
    usage-only event when the client did not ask for one)."""

    def __init__(self, *, strip_usage: bool, prompt_chars: int = 0) -> None:
        self.strip_usage = strip_usage
        self.prompt_chars = prompt_chars
        self.usage: tuple[int, int] | None = None
        self.content_events = 0
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        ends = list(EVENT_END.finditer(data))
        passed = chunk  # without stripping, everything passes on as it came
        if not ends:
            if len(data) > MAX_EVENT_BYTES:  # no event boundary in sight: not an SSE stream
                self._pending = b""
                return data if self.strip_usage else passed
            self._pending = data
            return b"" if self.strip_usage else passed
        cut = ends[-1].end()
        self._pending = data[cut:]
        kept = []
        start = 0
        for end in ends:
            event = data[start : end.end()]
            start = end.end()
            if self._read(event):
                kept.append(event)
        return b"".join(kept) if self.strip_usage else passed

    def flush(self) -> bytes:
        """What is left at the end of the stream (an event without its blank line)."""
        rest, self._pending = self._pending, b""
        return rest if self.strip_usage else b""

    def _read(self, event: bytes) -> bool:
        """Count the event; False if it is the usage-only event."""
        if b"data:" not in event:
            return True
        payload = event.split(b"data:", 1)[1].strip()
        if payload == b"[DONE]":
            return True
        try:
            parsed = json.loads(payload)
        except ValueError:
            return True
        if not isinstance(parsed, dict):
            return True
        choices = parsed.get("choices")
        if isinstance(choices, list):
            self.content_events += sum(_has_text(c) for c in choices)
        usage = _usage_of(parsed)
        if usage is None:
            return True
        self.usage = usage
        return bool(choices)  # vLLM's usage event has empty choices

    def used(self) -> tuple[int, int]:
        """(prompt, completion) tokens: the model's own count, else the estimate."""
        if self.usage is not None:
            return self.usage
        return math.ceil(self.prompt_chars / 4), self.content_events


def _has_text(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(
            delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
        )
    return bool(choice.get("text"))


def prompt_chars(request: dict[str, Any]) -> int:
    """The characters of a request's messages (or prompt), for the estimate."""
    messages = request.get("messages")
    if isinstance(messages, list):
        return sum(
            len(m["content"]) for m in messages
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )  # fmt: skip
    prompt = request.get("prompt")
    return len(prompt) if isinstance(prompt, str) else 0


class WholeCounter:
    """Reads a whole JSON answer's usage once it is complete (the body passes on as it comes)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        if self._size <= MAX_WHOLE_BYTES:
            self._parts.append(chunk)
        else:
            self._parts.clear()
        return chunk

    def flush(self) -> bytes:
        return b""

    def used(self) -> tuple[int, int]:
        if not self._parts or self._size > MAX_WHOLE_BYTES:
            return 0, 0
        try:
            return _usage_of(json.loads(b"".join(self._parts))) or (0, 0)
        except ValueError:
            return 0, 0
