"""The answer's events: parsed from real SSE bytes over a socket (split anywhere) and from a
whole JSON body, then applied to an answer by its one writer, Answer.apply."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chat_cli import errors
from chat_cli.api import sse
from chat_cli.api.answer import Answer, Usage
from chat_cli.api.events import (
    CallDelta,
    Done,
    Event,
    Finish,
    Reasoning,
    Sent,
    ServerError,
    Text,
    UsageReport,
)
from chat_cli.api.transport import Lines


def frame(data: dict[str, Any] | str, event: str = "") -> bytes:
    body = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\r\n" if event else "").encode() + f"data: {body}\r\n\r\n".encode()


def delta(**fields: Any) -> dict[str, Any]:
    finish = fields.pop("finish", None)
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


# A stream with what servers send: a comment, a role-only delta, reasoning, text with a
# two-byte UTF-8 character and an emoji sent as two JSON escapes in two chunks, a tool call
# in pieces, multi-line data, finish_reason, a usage chunk and [DONE].
STREAM = b"".join(
    [
        b": keep-alive\r\n\r\n",
        frame(delta(role="assistant")),
        frame(delta(reasoning_content="thinking")),
        frame(delta(content="caf\u00e9 ")),
        frame('{"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}'),
        frame('{"choices":[{"index":0,"delta":{"content":"\\ude00!"}}]}'),
        frame(delta(tool_calls=[{"index": 0, "id": "c1", "function": {"name": "echo"}}])),
        frame(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"te'}}])),
        frame(delta(tool_calls=[{"index": 0, "function": {"arguments": 'xt": 1}'}}])),
        b'data: {"choices":[{"index":0,\r\ndata: "delta":{"content":"end"}}]}\r\n\r\n',
        frame(delta(finish="tool_calls")),
        frame({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}),
        b"data: [DONE]\r\n\r\n",
    ]
)
EXPECTED = [
    Reasoning("thinking", 0.0, 1),
    Text("caf\u00e9 ", 0.0, 1),
    Text("\U0001f600!", 0.0, 2),  # the first half waited for the second: two chunks' worth
    CallDelta(0, "c1", "echo", ""),
    CallDelta(0, "", "", '{"te'),
    CallDelta(0, "", "", 'xt": 1}'),
    Text("end", 0.0, 1),
    Finish("tool_calls"),
    UsageReport(7, 5),
    Done(),
]


def timeless(events: list[Event]) -> list[tuple[object, ...]]:
    """Comparable events: the kind named (tuples of equal fields compare equal), no time."""
    return [
        (type(e).__name__, *(e._replace(at=0.0) if isinstance(e, Text | Reasoning) else e))
        for e in events
    ]


def served_lines(pieces: list[bytes]) -> Iterator[str]:
    """The lines chat's transport reads from a real HTTP response whose body arrives in
    `pieces`: each is sent only once the reader has taken in the ones before it, so every
    boundary between two pieces is a boundary between two reads."""
    server, client = socket.socketpair()
    server.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    response = http.client.HTTPResponse(client)
    response.begin()
    lines = Lines(response, client, first_wait=10.0, stall=10.0)

    def feed() -> None:
        sent = 0
        try:
            for piece in pieces:
                deadline = time.monotonic() + 10.0
                while lines.received < sent and time.monotonic() < deadline:
                    time.sleep(0.0005)
                server.sendall(piece)
                sent += len(piece)
        finally:
            server.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield from lines
    finally:
        feeder.join(10.0)
        response.close()
        client.close()


@pytest.mark.parametrize("size", [1, 3, 64, len(STREAM)])
def test_a_stream_split_anywhere_parses_to_the_same_events(size: int) -> None:
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    parser = sse.Parser(completions=False)
    events = list(parser.parse(served_lines(pieces)))
    assert timeless(events) == timeless(EXPECTED)
    assert parser.frames == 12  # the comment is no frame; the role-only delta is one


def test_applying_the_events_builds_the_answer() -> None:
    answer = Answer()
    events: list[Event] = [Sent(100.0), *EXPECTED]
    events[1] = Reasoning("thinking", 100.25, 1)
    for event in events:
        answer.apply(event)
    assert answer.started == 100.0 and answer.ttft == 0.25
    assert (answer.text, answer.reasoning_text) == ("caf\u00e9 \U0001f600!end", "thinking")
    assert [c.to_api() for c in answer.tool_calls] == [
        {"id": "c1", "type": "function", "function": {"name": "echo", "arguments": '{"text": 1}'}}
    ]
    assert (answer.finish_reason, answer.usage, answer.done) == (
        "tool_calls",
        Usage(7, 5, False),
        True,
    )
    assert answer.chunks == 5


def test_without_usage_the_end_estimates_it_from_the_chunks() -> None:
    answer = Answer()
    for event in (Text("a", 1.0), Text("b", 1.1), Finish("stop")):
        answer.apply(event)
    answer.end(prompt_chars=40, at=2.0)
    assert (answer.usage, answer.ended_at) == (Usage(10, 2, True), 2.0)


def test_named_edits_are_the_only_other_writers() -> None:
    answer = Answer()
    for event in (Text("shown ", 1.0), Text("not drawn", 1.0), CallDelta(1, name="a")):
        answer.apply(event)
    answer.drop_text_tail(len("not drawn"))
    assert answer.text == "shown "
    [call] = answer.name_calls()
    assert call.id.startswith("call_") and answer.name_calls()[0].id == call.id  # kept once given
    answer.drop_calls()
    assert answer.tool_calls == []


def test_a_whole_body_gives_the_events_a_stream_would() -> None:
    message = {
        "role": "assistant",
        "content": "caf\u00e9 \U0001f600!end",
        "reasoning_content": "thinking",
        "tool_calls": [{"id": "c1", "function": {"name": "echo", "arguments": {"text": 1}}}],
    }
    body = {
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5},
    }
    events = sse.whole(json.dumps(body).encode(), "application/json", completions=False)
    streamed, whole = Answer(), Answer()
    for event in EXPECTED:
        streamed.apply(event)
    for event in events:
        whole.apply(event)
    assert (whole.text, whole.reasoning_text, whole.finish_reason, whole.usage) == (
        streamed.text,
        streamed.reasoning_text,
        streamed.finish_reason,
        streamed.usage,
    )
    assert [c.to_api() for c in whole.tool_calls] == [c.to_api() for c in streamed.tool_calls]


def test_completions_text_and_a_finish_without_done() -> None:
    stream = [
        frame({"choices": [{"index": 0, "text": "a"}]}),
        frame({"choices": [{"index": 0, "text": "b", "finish_reason": "length"}]}),
    ]
    parser = sse.Parser(completions=True)
    events = timeless(list(parser.parse(served_lines(stream))))
    assert events == timeless([Text("a", 0.0), Finish("length"), Text("b", 0.0)])


def test_an_error_event_is_an_event_and_ends_the_parse() -> None:
    stream = [
        frame(delta(content="a")),
        frame({"message": "model crashed"}, event="error"),
        frame(delta(content="never read")),
    ]
    events = timeless(list(sse.Parser(completions=False).parse(served_lines(stream))))
    assert events == timeless([Text("a", 0.0), ServerError("model crashed")])


def test_a_half_emoji_at_the_end_becomes_the_replacement_character() -> None:
    stream = [frame('{"choices":[{"index":0,"delta":{"content":"x\\ud83d"}}]}')]
    events = timeless(list(sse.Parser(completions=False).parse(served_lines(stream))))
    assert events == timeless([Text("x", 0.0), Text("\ufffd", 0.0, 0)])


@pytest.mark.parametrize(("data", "message"), [("{not json", "not JSON"), ("[1]", "not an object")])
def test_a_malformed_frame_is_a_stream_error(data: str, message: str) -> None:
    with pytest.raises(errors.StreamFailed, match=message):
        list(sse.Parser(completions=False).parse(served_lines([frame(data)])))


def test_events_cannot_change_once_made() -> None:
    """The reader thread hands them over: nothing the main thread holds may change after."""
    with pytest.raises(AttributeError):
        Text("a", 1.0).text = "b"  # type: ignore[misc]
