"""The fault list against the fault-injecting server: one clear error, partial answer kept,
conversation intact, next question answered."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from chat_cli import errors
from chat_cli.api.answer import Answer
from chat_cli.api.client import ChatClient, Sampling, fetch_models, wait_for_models
from chat_cli.conversation import Conversation, Message
from chat_cli.session import INCOMPLETE, INTERRUPTED, TRUNCATED, Session
from tests.chat_support import closed_port_url, fake_server
from tests.fake_openai import DEFAULT_ANSWER, MODEL, FakeServer, tokens
from tests.support import wait_for

PARTIAL = "".join(tokens(DEFAULT_ANSWER)[:3])


class Collect:
    live = False

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.reasoning_parts: list[str] = []
        self.note: str | None = "unfinished"

    def waiting(self) -> float | None:
        return None

    def tick(self) -> None:
        pass

    def resized(self) -> None:
        pass

    def begin(self) -> None:
        self.note = None

    def reasoning(self, text: str) -> None:
        self.reasoning_parts.append(text)

    def content(self, text: str) -> None:
        self.parts.append(text)

    def finish(self, answer: Answer, note: str | None) -> None:
        self.note = note


def client_sockets(server: FakeServer) -> list[Any]:
    """This process's open connections to `server` (its own accepted sockets not counted)."""
    port = int(server.url.rsplit(":", 1)[1])
    return [c for c in psutil.Process().net_connections() if c.raddr and c.raddr[1] == port]


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with fake_server() as server:
        yield server
        # Nothing is pooled and nothing is left to the garbage collector: every request the
        # test made, answered, refused, cut or cancelled, has closed its connection.
        wait_for(lambda: not client_sockets(server), timeout=5, what="client sockets closed")


def make_session(server: FakeServer, timeout: float = 10.0, model: str = MODEL) -> Session:
    client = ChatClient(server.url + "/v1", server.state.api_key, timeout)
    return Session(client, Conversation(), Sampling(model))


def test_happy_path_counts_tokens_when_server_sends_no_usage(fake: FakeServer) -> None:
    session = make_session(fake)
    collect = Collect()
    answer = session.ask("hello", collect)
    assert answer.text == DEFAULT_ANSWER == "".join(collect.parts)
    assert collect.note is None
    assert answer.finish_reason == "stop"
    assert answer.usage is not None and answer.usage.estimated
    assert answer.usage.completion_tokens == len(tokens(DEFAULT_ANSWER))
    assert fake.state.requests[-1]["stream_options"] == {"include_usage": True}
    assert [m.role for m in session.conversation.messages] == ["user", "assistant"]


def test_ctrl_c_hangs_up_the_stream_keeping_what_was_shown(fake: FakeServer) -> None:
    class CtrlCAtTheThirdWord(Collect):
        def content(self, text: str) -> None:
            super().content(text)
            if len(self.parts) == 3:
                os.kill(os.getpid(), signal.SIGINT)

    session = make_session(fake)
    collect = CtrlCAtTheThirdWord()
    answer = session.ask("tell me @fault:slow", collect)
    assert collect.note == INTERRUPTED
    kept = session.conversation.messages[-1]
    assert (kept.content, kept.incomplete) == ("".join(collect.parts), INTERRUPTED)
    assert answer.text == kept.content and answer.usage is not None
    # The reader thread ended and its connection is closed, not left to the pool or the GC.
    assert not [t for t in threading.enumerate() if t.name == "chat-reader"]
    assert client_sockets(fake) == []


def test_server_usage_chunk_is_used_when_sent(fake: FakeServer) -> None:
    fake.state.scenario = "usage"
    answer = make_session(fake).ask("hello", Collect())
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.estimated) == (7, False)


def test_reasoning_is_kept_apart_from_the_answer(fake: FakeServer) -> None:
    session = make_session(fake)
    collect = Collect()
    answer = session.ask("think @fault:reasoning", collect)
    assert answer.reasoning_text == "Let me think about this carefully."
    assert answer.text == DEFAULT_ANSWER
    assert "think" not in "".join(collect.parts)
    assert session.conversation.messages[-1].reasoning == answer.reasoning_text
    assert "reasoning" not in session.conversation.api_messages()[-1]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("cut", "cut mid-answer"),
        ("error_event", "engine died mid-answer"),
        ("malformed", "malformed stream line"),
        ("no_done", "ended early"),
        ("stall", "sent nothing for 0.5 s"),
    ],
)
def test_stream_faults_keep_the_partial_answer(fake: FakeServer, fault: str, expected: str) -> None:
    session = make_session(fake, timeout=0.5)
    collect = Collect()
    with pytest.raises(errors.StreamFailed) as info:
        session.ask(f"question @fault:{fault}", collect)
    message = str(info.value)
    assert expected in message and "partial answer was kept" in message
    assert "\n" not in message
    kept = session.conversation.messages[-1]
    assert (kept.role, kept.content, kept.incomplete) == ("assistant", PARTIAL, INCOMPLETE)
    assert collect.note == INCOMPLETE
    # The conversation is intact and the next question is answered.
    fake.state.release.set()
    answer = session.ask("next", Collect())
    assert answer.text == DEFAULT_ANSWER
    sent = fake.state.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == PARTIAL


def test_a_stall_before_any_text_claims_no_partial_answer(fake: FakeServer) -> None:
    session = make_session(fake, timeout=0.5)
    with pytest.raises(errors.StreamFailed) as info:
        session.ask("question @fault:stall_empty", Collect())
    fake.state.release.set()
    assert "partial" not in str(info.value)
    assert str(info.value).endswith("(stall timeout); no answer text arrived (try /retry)")
    assert info.value.one_shot().endswith("(stall timeout); no answer text arrived")
    assert session.conversation.messages == []
    assert session.retry() == Message("user", "question @fault:stall_empty")


@pytest.mark.parametrize("fault", ["finish_cut", "finish_no_done"])
def test_an_answer_whose_stream_ends_after_its_finish_reason_is_complete(
    fake: FakeServer, fault: str
) -> None:
    """vLLM and llama.cpp always send finish_reason, then [DONE]; once finish_reason is in,
    the whole answer is, so losing only [DONE] (a proxy, a cut connection) costs nothing."""
    session = make_session(fake)
    collect = Collect()
    answer = session.ask(f"question @fault:{fault}", collect)
    assert (answer.text, answer.finish_reason, answer.done) == (DEFAULT_ANSWER, "stop", False)
    assert collect.note is None
    assert session.conversation.messages[-1].incomplete is None


@pytest.mark.parametrize(
    ("fault", "expected", "kept"),
    [
        ("cut_before_finish", "cut mid-answer", DEFAULT_ANSWER),
        ("done_no_finish", "ended the answer early", PARTIAL),
    ],
)
def test_an_answer_without_finish_reason_is_incomplete(
    fake: FakeServer, fault: str, expected: str, kept: str
) -> None:
    """Even with every word in, or with [DONE]: only finish_reason says the answer ended."""
    session = make_session(fake)
    collect = Collect()
    with pytest.raises(errors.StreamFailed, match=expected):
        session.ask(f"question @fault:{fault}", collect)
    message = session.conversation.messages[-1]
    assert (message.content, message.incomplete) == (kept, INCOMPLETE)
    assert collect.note == INCOMPLETE


@pytest.mark.parametrize(
    ("fault", "error_type", "expected"),
    [
        ("http401", errors.AuthFailed, "VLLM_API_KEY"),
        ("http400ctx", errors.ContextTooLong, "/trim drops the oldest turns, /compact"),
        ("empty_ctx", errors.ContextTooLong, "maximum context length is 2048"),
        ("http500", errors.ServerFailed, "500 Internal Server Error: engine crashed"),
        ("http502", errors.ServerFailed, "failed (502 Bad Gateway); try /retry"),
        ("http502empty", errors.ServerFailed, "failed (502 Bad Gateway, empty body)"),
    ],
)
def test_http_errors_keep_the_question_for_retry(
    fake: FakeServer, fault: str, error_type: type[errors.ChatError], expected: str
) -> None:
    session = make_session(fake)
    started = time.monotonic()
    with pytest.raises(error_type) as info:
        session.ask(f"question @fault:{fault}", Collect())
    assert time.monotonic() - started < 1.0  # shown as it arrives, not after a grace period
    assert expected in str(info.value)
    assert session.conversation.messages == []
    assert session.retry() == Message("user", f"question @fault:{fault}")


def test_unknown_model_lists_served_models(fake: FakeServer) -> None:
    session = make_session(fake, model="missing")
    with pytest.raises(errors.ModelNotFound) as info:
        session.ask("hi", Collect())
    assert "fake-model, other-model" in str(info.value)


def test_unreachable_server() -> None:
    client = ChatClient(closed_port_url() + "/v1", None, 5.0)
    session = Session(client, Conversation(), Sampling(MODEL))
    with pytest.raises(errors.ServerUnreachable, match="cannot reach"):
        session.ask("hi", Collect())
    with pytest.raises(errors.ServerUnreachable, match="mixvllm-serve up"):
        fetch_models(closed_port_url() + "/v1", None)


def test_models_needs_the_key() -> None:
    with fake_server(api_key="sekrit") as server:
        with pytest.raises(errors.AuthFailed, match="--api-key"):
            fetch_models(server.url + "/v1", None)
        assert fetch_models(server.url + "/v1", "sekrit") == [MODEL, "other-model"]


def test_wait_for_a_loading_server_reports_progress() -> None:
    with fake_server(loading_until=time.monotonic() + 1.0) as server:
        seen: list[str] = []
        models = wait_for_models(server.url + "/v1", None, 20.0, seen.append)
    assert models[0] == MODEL
    assert seen and "waiting for" in seen[0]
    assert seen[0].endswith("server up, model not ready (503: Loading model)")


def test_wait_gives_up_with_a_clear_message() -> None:
    expected = r"not ready after 1 s \(last: .*503"
    with (
        fake_server(loading_until=time.monotonic() + 600) as server,
        pytest.raises(errors.WaitTimeout, match=expected),
    ):
        wait_for_models(server.url + "/v1", None, 1.0, lambda _: None)


def test_no_stream_and_completions_endpoints(fake: FakeServer) -> None:
    session = make_session(fake)
    session.stream = False
    answer = session.ask("hello", Collect())
    assert answer.text == DEFAULT_ANSWER
    assert answer.usage is not None and not answer.usage.estimated
    assert "stream" not in fake.state.requests[-1]

    session = make_session(fake)
    session.completions = True
    answer = session.ask("Once upon a time", Collect())
    assert answer.text == DEFAULT_ANSWER
    assert fake.state.requests[-1]["prompt"] == "Once upon a time\n"


def test_sampling_settings_reach_the_server(fake: FakeServer) -> None:
    session = make_session(fake)
    session.set_sampling(temperature=0.2, top_p=0.9, max_tokens=64, seed=7)
    session.ask("hi", Collect())
    request = fake.state.requests[-1]
    assert (request["temperature"], request["top_p"], request["max_tokens"], request["seed"]) == (
        0.2,
        0.9,
        64,
        7,
    )


def test_sse_comments_multiline_data_and_finish_without_done(fake: FakeServer) -> None:
    fake.state.raw_sse = (
        b": keep-alive comment\n\n"
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
        b'data: {"choices":[{"index":0,\n'
        b'data: "delta":{"content":"b"},"finish_reason":"stop"}]}\n\n'
    )
    answer = make_session(fake).ask("hi", Collect())
    assert (answer.text, answer.finish_reason, answer.done) == ("ab", "stop", False)


def test_error_event_by_event_name(fake: FakeServer) -> None:
    fake.state.raw_sse = (
        b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
        b'event: error\ndata: {"message": "server overloaded"}\n\n'
    )
    session = make_session(fake)
    with pytest.raises(errors.StreamFailed, match="server overloaded"):
        session.ask("hi", Collect())
    assert session.conversation.messages[-1].content == "x"


def test_unexpected_chunk_shape_is_malformed(fake: FakeServer) -> None:
    fake.state.raw_sse = b'data: {"choices":[{"index":0,"delta":"oops"}]}\n\ndata: [DONE]\n\n'
    with pytest.raises(errors.StreamFailed, match="unexpected chunk"):
        make_session(fake).ask("hi", Collect())


# -- answers that bring no text (issue 10, item 2) ---------------------------------------
def sse(*chunks: str) -> bytes:
    return b"".join(b"data: " + c.encode() + b"\n\n" for c in (*chunks, "[DONE]"))


FINISH_STOP = '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (sse('{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}', FINISH_STOP),
         "the model gave an empty answer (finish_reason: stop)"),
        (sse('{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1",'
             '"type":"function","function":{"name":"get_weather","arguments":""}}]}}]}',
             '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
             '"function":{"arguments":"{}"}}]}}]}',
             '{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}'),
         "the model asked to call a tool (get_weather); chat has no tools enabled"),
        (sse('{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}',
             '{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}'),
         "reached max_tokens on reasoning before any text"),
    ],
)  # fmt: skip
def test_an_answer_without_text_says_what_happened(
    fake: FakeServer, body: bytes, expected: str
) -> None:
    fake.state.raw_sse = body
    session = make_session(fake)
    with pytest.raises(errors.NothingAnswered) as info:
        session.ask("question", Collect())
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert session.conversation.messages == []
    assert session.retry() == Message("user", "question")


def test_an_answer_cut_by_max_tokens_is_kept_with_a_note(fake: FakeServer) -> None:
    fake.state.raw_sse = sse(
        '{"choices":[{"index":0,"delta":{"content":"Once upon"}}]}',
        '{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}',
    )
    session = make_session(fake)
    collect = Collect()
    answer = session.ask("a story", collect)
    assert answer.text == "Once upon" and collect.note == TRUNCATED
    assert session.conversation.messages[-1].incomplete == TRUNCATED


def test_a_body_that_is_not_an_event_stream_is_named(fake: FakeServer) -> None:
    session = make_session(fake)
    with pytest.raises(errors.BadResponse) as info:
        session.ask("hi @fault:html", Collect())
    assert str(info.value) == (
        "the model server answered with text/html, not an event stream "
        "(first line: <html><body>Welcome to the proxy</body></html>)"
    )
    assert session.conversation.messages == []


def test_a_whole_answer_to_a_streamed_request_is_used(fake: FakeServer) -> None:
    answer = make_session(fake).ask("hi @fault:whole_json", Collect())
    assert (answer.text, answer.finish_reason) == (DEFAULT_ANSWER, "stop")


# -- text a server splits badly (item 3) -------------------------------------------------
def test_an_emoji_split_across_chunks_is_joined_and_a_lone_half_replaced(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.state.raw_sse = sse(
        '{"choices":[{"index":0,"delta":{"content":"smile \\ud83d"}}]}',
        '{"choices":[{"index":0,"delta":{"content":"\\ude00 and \\udc00 end \\ud83d"}}]}',
        FINISH_STOP,
    )
    session = make_session(fake)
    session.conversation.path = tmp_path / "chat.json"
    collect = Collect()
    answer = session.ask("hi", collect)
    expected = "smile \U0001f600 and \ufffd end \ufffd"
    assert answer.text == expected == "".join(collect.parts)
    saved = json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))
    assert saved["messages"][-1]["content"] == expected
    fake.state.raw_sse = None
    assert session.ask("next", Collect()).text == DEFAULT_ANSWER  # the history still sends


def test_a_message_that_is_not_utf8_never_enters_the_history(
    fake: FakeServer, tmp_path: Path
) -> None:
    session = make_session(fake)
    session.conversation.path = tmp_path / "chat.json"
    with pytest.raises(errors.ChatError, match="not valid UTF-8 text"):
        session.ask("bad \udcff bytes", Collect())
    assert session.conversation.messages == [] and fake.state.requests == []
    assert list(tmp_path.iterdir()) == []


# -- timeouts: a stall is silence mid-stream, not a long answer (item 4) -----------------
@pytest.mark.parametrize("connection_close", [False, True], ids=["keep-alive", "close"])
@pytest.mark.parametrize(("stall", "deadline"), [(1.0, 30.0), (2.0, 0.5)])
def test_a_stall_ends_at_the_stall_timeout_and_says_so(
    fake: FakeServer, connection_close: bool, stall: float, deadline: float
) -> None:
    """http.client lets go of the socket of a `Connection: close` answer: the stall timeout
    must still be set on it, and the message must name the limit that ran out."""
    fake.state.connection_close = connection_close
    client = ChatClient(fake.url + "/v1", None, stall, deadline=deadline)
    session = Session(client, Conversation(), Sampling(MODEL))
    started = time.monotonic()
    with pytest.raises(errors.StreamFailed) as info:
        session.ask("question @fault:stall", Collect())
    took = time.monotonic() - started
    fake.state.release.set()
    assert f"sent nothing for {stall:g} s (stall timeout)" in str(info.value)
    assert stall - 0.05 <= took < stall + 1.5


def test_no_stream_waits_for_an_answer_longer_than_the_stall_timeout(fake: FakeServer) -> None:
    fake.state.token_delay = 0.1  # about 1.2 s for the whole answer
    session = make_session(fake, timeout=0.3)
    session.stream = False
    assert session.ask("hello", Collect()).text == DEFAULT_ANSWER


def test_no_stream_gives_up_at_the_deadline(fake: FakeServer) -> None:
    fake.state.token_delay = 0.5
    client = ChatClient(fake.url + "/v1", None, 0.3, deadline=0.5)
    session = Session(client, Conversation(), Sampling(MODEL), stream=False)
    started = time.monotonic()
    with pytest.raises(errors.TimedOut, match=r"has not finished the answer after 0.5 s"):
        session.ask("hello", Collect())
    assert time.monotonic() - started < 3.0
    assert session.retry() == Message("user", "hello")


def test_a_long_wait_for_the_first_token_is_not_a_stall(fake: FakeServer) -> None:
    """The queue and a long prompt come before the first byte: the deadline covers them."""
    session = make_session(fake, timeout=0.3)
    threading.Timer(1.0, fake.state.release.set).start()
    assert session.ask("long prompt @fault:hang", Collect()).text == DEFAULT_ANSWER


@pytest.mark.parametrize("connection_close", [False, True], ids=["keep-alive", "close"])
def test_no_first_token_by_the_deadline(fake: FakeServer, connection_close: bool) -> None:
    fake.state.connection_close = connection_close
    client = ChatClient(fake.url + "/v1", None, 0.3, deadline=0.6)
    session = Session(client, Conversation(), Sampling(MODEL))
    with pytest.raises(errors.TimedOut, match=r"has not started to answer after 0.6 s"):
        session.ask("long prompt @fault:hang", Collect())


# -- timings (item 6) --------------------------------------------------------------------
def test_ttft_counts_from_the_request_leaving(fake: FakeServer) -> None:
    client = make_session(fake).client
    answer = Answer()
    time.sleep(0.3)  # work done before the request (imports, setup) is not the server's
    for event in client.stream([{"role": "user", "content": "hi"}], Sampling(MODEL)):
        answer.apply(event)
    assert answer.text and answer.ttft is not None and answer.ttft < 0.25


# -- an HTTP proxy from the environment is still used (the SDK and urllib honoured it) ------
@pytest.fixture
def proxy(fake: FakeServer) -> Iterator[tuple[str, list[bytes]]]:
    """A forwarding HTTP proxy: records each request line, then pipes both ways."""
    seen: list[bytes] = []
    opened: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    upstream = ("127.0.0.1", int(fake.url.rsplit(":", 1)[1]))

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                opened.append(client)
                head = client.recv(65536)
                line, _, rest = head.partition(b"\r\n")
                seen.append(line)
                method, target, version = line.split(b" ")
                path = b"/" + target.split(b"/", 3)[3]
                server = socket.create_connection(upstream)
                opened.append(server)
                server.sendall(b" ".join((method, path, version)) + b"\r\n" + rest)
                threading.Thread(target=pipe, args=(server, client), daemon=True).start()
                threading.Thread(target=pipe, args=(client, server), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    listener.close()
    for sock in opened:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def test_the_environments_http_proxy_is_used(
    fake: FakeServer, proxy: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = proxy
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", url)
    assert fetch_models(fake.url + "/v1", None) == [MODEL, "other-model"]
    assert make_session(fake).ask("hi", Collect()).text == DEFAULT_ANSWER
    assert seen == [
        f"GET {fake.url}/v1/models HTTP/1.1".encode(),
        f"POST {fake.url}/v1/chat/completions HTTP/1.1".encode(),
    ]
