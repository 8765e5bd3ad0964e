"""A chat completion's server-sent events (or its whole JSON body), parsed into answer events.

Parsing only: nothing here writes an answer; the events say what to write (Answer.apply).

The SDK's per-chunk model building costs ~0.1 ms a token, more than rendering; parsing the SSE
lines here is several times cheaper.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from chat_cli import errors
from chat_cli.api.answer import estimate_tokens, has_surrogates, repair
from chat_cli.api.events import (
    CallDelta,
    Done,
    Event,
    Finish,
    Reasoning,
    ServerError,
    Text,
    UsageReport,
)


def frames(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event, data) for each server-sent event; multi-line data joined with newlines."""
    event = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield event, "\n".join(data)


class Surrogates:
    """Joins an emoji a server split into two chunks as JSON escapes (\\ud83d, then
    \\ude00): a high surrogate at the end of a piece waits for the next piece of its kind."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}

    def fix(self, kind: str, text: str) -> str:
        held = self.held.pop(kind, "")
        if not (held or has_surrogates(text)):
            return text
        text = held + text
        if text and "\ud800" <= text[-1] <= "\udbff":
            self.held[kind], text = text[-1], text[:-1]
        return repair(text)

    def flush(self) -> list[tuple[str, str]]:
        """What is still held can no longer be paired: the replacement character."""
        out = [(kind, "\ufffd") for kind in self.held]
        self.held.clear()
        return out


class Parser:
    """Reads one request's server-sent events into answer events, until [DONE]; counts the
    server-sent events it read (`frames`), whatever they held."""

    def __init__(self, completions: bool) -> None:
        self.completions = completions
        self.frames = 0
        self._surrogates = Surrogates()
        self._tokens = 0  # chunks whose text is held back (half a surrogate pair)

    def parse(self, lines: Iterable[str]) -> Iterator[Event]:
        for event, data in frames(lines):
            self.frames += 1
            if data == "[DONE]":
                yield Done()
                break
            chunk = _chunk(data)
            if chunk.get("error") or event == "error":
                yield ServerError(error_message(chunk))
                return
            try:
                yield from self._chunk_events(chunk)
            except (AttributeError, TypeError, ValueError) as err:
                unexpected = f"unexpected chunk: {errors.short(data, 60)}"
                raise errors.malformed_stream(unexpected) from err
        for kind, text in self._surrogates.flush():
            yield (Text if kind == "content" else Reasoning)(text, time.monotonic(), self._tokens)
            self._tokens = 0

    def _chunk_events(self, chunk: dict[str, Any]) -> Iterator[Event]:
        usage = chunk.get("usage")
        if usage and usage.get("completion_tokens") is not None:
            prompt = int(usage.get("prompt_tokens") or 0)
            yield UsageReport(prompt, int(usage["completion_tokens"]))
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                yield Finish(str(choice["finish_reason"]))
            if self.completions:
                content, reasoning = choice.get("text"), None
            else:
                delta = choice.get("delta") or {}
                content = delta.get("content")
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                yield from call_deltas(delta.get("tool_calls") or ())
            if not (content or reasoning):
                continue
            self._tokens += 1
            at = time.monotonic()
            if reasoning and (text := self._surrogates.fix("reasoning", str(reasoning))):
                yield Reasoning(text, at, self._tokens)
                self._tokens = 0
            if content and (text := self._surrogates.fix("content", str(content))):
                yield Text(text, at, self._tokens)
                self._tokens = 0


def whole(body: bytes, content_type: str, completions: bool) -> list[Event]:
    """The events of a whole (non-streamed) completion; also what a server that ignores
    `stream` sends."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "choices" not in data:
        raise errors.not_an_event_stream(content_type, body)
    try:
        return list(_whole_events(data, completions))
    except (AttributeError, TypeError, ValueError, IndexError) as err:
        raise errors.malformed_stream("unexpected response shape") from err


def _whole_events(data: dict[str, Any], completions: bool) -> Iterator[Event]:
    at = time.monotonic()
    usage = data.get("usage")
    if usage:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        yield UsageReport(int(prompt or 0), int(completion or 0))
    if not data["choices"]:
        raise errors.malformed_stream("no choices in the response")
    choice = data["choices"][0]
    yield Finish(str(choice.get("finish_reason") or "stop"))
    if completions:
        text = choice.get("text") or ""
    else:
        message = choice.get("message") or {}
        yield from call_deltas(message.get("tool_calls") or ())
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning:
            yield Reasoning(repair(str(reasoning)), at, 0)
        text = message.get("content") or ""
    text = repair(str(text))
    if text:
        yield Text(text, at, estimate_tokens(len(text)))


def call_deltas(deltas: Iterable[dict[str, Any]]) -> Iterator[CallDelta]:
    """`tool_calls` deltas; a whole (non-streamed) message is one delta per call."""
    for position, delta in enumerate(deltas):
        index = delta.get("index")
        function = delta.get("function") or {}
        arguments = function.get("arguments") or ""
        yield CallDelta(
            int(index) if index is not None else position,
            str(delta.get("id") or ""),
            str(function.get("name") or ""),
            # A server may send an object instead of its JSON text.
            arguments if isinstance(arguments, str) else json.dumps(arguments),
        )


def _chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError as err:
        raise errors.malformed_stream(f"not JSON: {errors.short(data, 60)}") from err
    if not isinstance(chunk, dict):
        raise errors.malformed_stream(f"not an object: {errors.short(data, 60)}")
    return chunk


def error_message(chunk: dict[str, Any]) -> str:
    inner = chunk.get("error", chunk)
    message = inner.get("message") if isinstance(inner, dict) else inner
    return errors.short(str(message or "unknown error"))
