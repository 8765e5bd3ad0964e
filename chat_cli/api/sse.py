"""A chat completion's server-sent events, parsed into answer pieces.

The SDK's per-chunk model building costs ~0.1 ms a token, more than rendering; parsing the SSE
lines here is several times cheaper.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from chat_cli import errors
from chat_cli.api.answer import Answer, ToolCall, Usage, has_surrogates, repair

Piece = tuple[str, str]  # ("content" | "reasoning", text)


def events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
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

    def flush(self) -> list[Piece]:
        """What is still held can no longer be paired: the replacement character."""
        out = [(kind, "\ufffd") for kind in self.held]
        self.held.clear()
        return out


def pieces(stream: Iterable[tuple[str, str]], answer: Answer, completions: bool) -> Iterator[Piece]:
    """The pieces of each chunk until [DONE], filling `answer` as they come."""
    surrogates = Surrogates()
    for event, data in stream:
        answer.events += 1
        if data == "[DONE]":
            answer.done = True
            break
        chunk = _chunk(event, data)
        try:
            for kind, raw in _chunk_pieces(chunk, answer, completions):
                text = surrogates.fix(kind, raw)
                if text:
                    yield _add(answer, kind, text)
        except (AttributeError, TypeError, ValueError) as err:
            raise errors.malformed_stream(f"unexpected chunk: {errors.short(data, 60)}") from err
    for kind, text in surrogates.flush():
        yield _add(answer, kind, text)


def _add(answer: Answer, kind: str, text: str) -> Piece:
    if answer.first_token_at is None:
        answer.first_token_at = time.monotonic()
    (answer.content if kind == "content" else answer.reasoning).append(text)
    return kind, text


def _chunk(event: str, data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError as err:
        raise errors.malformed_stream(f"not JSON: {errors.short(data, 60)}") from err
    if not isinstance(chunk, dict):
        raise errors.malformed_stream(f"not an object: {errors.short(data, 60)}")
    if chunk.get("error") or event == "error":
        raise errors.error_event(error_message(chunk))
    return chunk


def _chunk_pieces(chunk: dict[str, Any], answer: Answer, completions: bool) -> Iterator[Piece]:
    usage = chunk.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        answer.usage = Usage(
            int(usage.get("prompt_tokens") or 0), int(usage["completion_tokens"]), False
        )
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason"):
            answer.finish_reason = str(choice["finish_reason"])
        if completions:
            content, reasoning = choice.get("text"), None
        else:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if delta.get("tool_calls"):
                add_tool_calls(answer, delta["tool_calls"])
        if not (content or reasoning):
            continue
        answer.chunks += 1
        if reasoning:
            yield "reasoning", str(reasoning)
        if content:
            yield "content", str(content)


def add_tool_calls(answer: Answer, deltas: list[dict[str, Any]]) -> None:
    """Join `tool_calls` deltas by index: id and name come once, arguments in pieces. A whole
    (non-streamed) message is one delta per call."""
    for position, delta in enumerate(deltas):
        index = delta.get("index")
        index = int(index) if index is not None else position
        call = answer.calls.setdefault(index, ToolCall(index))
        call.id = call.id or str(delta.get("id") or "")
        function = delta.get("function") or {}
        call.name = call.name or str(function.get("name") or "")
        arguments = function.get("arguments")
        if arguments:
            # A server may send an object instead of its JSON text.
            call.arguments += arguments if isinstance(arguments, str) else json.dumps(arguments)


def error_message(chunk: dict[str, Any]) -> str:
    inner = chunk.get("error", chunk)
    message = inner.get("message") if isinstance(inner, dict) else inner
    return errors.short(str(message or "unknown error"))
