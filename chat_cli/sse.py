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
from chat_cli.answer import Answer, Usage

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


def pieces(stream: Iterable[tuple[str, str]], answer: Answer, completions: bool) -> Iterator[Piece]:
    """The pieces of each chunk until [DONE], filling `answer` as they come."""
    for event, data in stream:
        answer.events += 1
        if data == "[DONE]":
            answer.done = True
            return
        chunk = _chunk(event, data)
        try:
            yield from _chunk_pieces(chunk, answer, completions)
        except (AttributeError, TypeError, ValueError) as err:
            raise errors.malformed_stream(f"unexpected chunk: {errors.short(data, 60)}") from err


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
        if not (content or reasoning):
            continue
        answer.chunks += 1
        if answer.first_token_at is None:
            answer.first_token_at = time.monotonic()
        if reasoning:
            answer.reasoning.append(str(reasoning))
            yield "reasoning", str(reasoning)
        if content:
            answer.content.append(str(content))
            yield "content", str(content)


def error_message(chunk: dict[str, Any]) -> str:
    inner = chunk.get("error", chunk)
    message = inner.get("message") if isinstance(inner, dict) else inner
    return errors.short(str(message or "unknown error"))
