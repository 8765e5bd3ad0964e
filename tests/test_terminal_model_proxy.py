"""The model pass-through of the team modes (model_proxy/), in process, against the fake
OpenAI server for what a real model server cannot be made to do on cue: keys, faults, limits,
a client that never reads. The happy path with the real model and real accounts is in
test_terminal_model_team.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado import httpclient

from chat_cli.api import context as api_context
from terminal_server.model_proxy.counting import StreamCounter
from terminal_server.model_proxy.credentials import ModelKeys
from terminal_server.model_proxy.handler import ModelPassThrough
from tests.chat_support import CHAT, chat_env, fake_server
from tests.fake_openai import MODEL, FakeServer, sse_body, tokens
from tests.support import wait_for_async
from tests.terminal_support import Server, run, running_server

REAL_KEY = "sk-server-secret-0123"
CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@contextlib.asynccontextmanager
async def pass_through(fake: FakeServer, **overrides: Any) -> AsyncIterator[Server]:
    async with running_server(
        auth="proxy", model_server_url=fake.url, model_api_key=REAL_KEY, **overrides
    ) as srv:
        yield srv


def key(srv: Server, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {srv.ctx.model_keys.key_for(user)}"}


async def ask(
    srv: Server, user: str | None, body: dict[str, Any] | None = None,
    path: str = "chat/completions", headers: dict[str, str] | None = None, **kw: Any,
) -> httpclient.HTTPResponse:  # fmt: skip
    hdrs = {**(key(srv, user) if user else {}), **(headers or {})}
    if body is None:
        return await srv.fetch(f"model/v1/{path}", hdrs, **kw)
    return await srv.fetch(f"model/v1/{path}", hdrs, method="POST", body=json.dumps(body), **kw)


def events(body: bytes) -> list[Any]:
    out = []
    for line in body.decode().splitlines():
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def error_message(resp: httpclient.HTTPResponse) -> str:
    return str(json.loads(resp.body)["error"]["message"])


# -- keys ------------------------------------------------------------------------------------
def test_a_key_names_its_user_and_cannot_be_forged() -> None:
    keys = ModelKeys()
    alice = keys.key_for("alice")
    assert keys.user_for(alice) == "alice" and keys.user_for(keys.key_for("bob")) == "bob"
    mac = alice.rsplit(".", 1)[1]
    for forged in (
        f"mxu.bob.{mac}",  # her mac with his name
        ModelKeys().key_for("bob"),  # his key from another server start
        alice[:-1] + ("A" if alice[-1] != "A" else "B"),
        "mxu.bob.", "mxu..x", "", "sk-server-secret-0123", alice + "x" * 200, "mxu.bob.é",
    ):  # fmt: skip
        assert keys.user_for(forged) is None, forged


def test_a_wrong_or_missing_key_is_401_with_an_openai_error() -> None:
    async def body() -> None:
        with fake_server(api_key=REAL_KEY) as fake:
            async with pass_through(fake) as srv:
                forged = {"Authorization": f"Bearer {ModelKeys().key_for('alice')}"}
                for headers in ({}, forged, {"Authorization": f"Bearer {REAL_KEY}"}):
                    resp = await ask(srv, None, CHAT_BODY, headers=headers)
                    assert resp.code == 401, headers
                    assert "Invalid API key" in error_message(resp)
                    assert resp.headers["Content-Type"] == "application/json"
                assert fake.state.requests == []  # nothing reached the model server
                assert srv.ctx.metrics.rejected["model_key"] == 3

    run(body)


def test_token_mode_has_no_pass_through() -> None:
    async def body() -> None:
        with fake_server() as fake:
            async with running_server(model_server_url=fake.url) as srv:
                resp = await srv.fetch("model/v1/models", key(srv, "owner"))
                assert resp.code == 404

    run(body)


# -- answers and their usage ------------------------------------------------------------------
def test_a_streamed_answer_passes_with_the_real_key_and_its_usage_is_counted() -> None:
    async def body() -> None:
        with fake_server(api_key=REAL_KEY, scenario="usage") as fake:
            async with pass_through(fake) as srv:
                resp = await ask(srv, "alice", {**CHAT_BODY, "stream": True})
                assert resp.code == 200, resp.body
                assert resp.headers["Content-Type"] == "text/event-stream"
                # The usage event it asked for is not passed on: the client did not ask.
                expected = sse_body(fake.state.answer, usage=False)
                assert resp.body == expected
                assert fake.state.requests[-1]["stream_options"] == {"include_usage": True}
                # Asked by the client: passed on as it came.
                asked = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
                resp = await ask(srv, "alice", asked)
                assert resp.body == sse_body(fake.state.answer, usage=True)
                usage = srv.ctx.usage.snapshot()["alice"]
                n = len(tokens(fake.state.answer))
                assert (usage.prompt_today, usage.completion_today) == (14, 2 * n)
                assert (usage.requests, usage.active) == (2, 0)
                models = await ask(srv, "bob", path="models")
                assert models.code == 200 and json.loads(models.body)["data"][0]["id"] == MODEL
                assert "bob" not in srv.ctx.usage.snapshot()  # listing models costs nothing

    run(body)


def test_a_whole_answer_is_counted_from_its_usage() -> None:
    async def body() -> None:
        with fake_server(api_key=REAL_KEY) as fake:
            async with pass_through(fake) as srv:
                resp = await ask(srv, "bob", {**CHAT_BODY, "stream": False})
                assert resp.code == 200
                assert json.loads(resp.body)["choices"][0]["message"]["content"]
                assert "stream_options" not in fake.state.requests[-1]
                usage = srv.ctx.usage.snapshot()["bob"]
                assert (usage.prompt_total, usage.completion_total) == (
                    5, len(tokens(fake.state.answer)),
                )  # fmt: skip
                completions = await ask(srv, "bob", {"model": MODEL, "prompt": "x"}, "completions")
                assert json.loads(completions.body)["choices"][0]["text"]

    run(body)


def test_chat_learns_the_context_and_counts_tokens_through_the_pass_through() -> None:
    """llama-server's /props (its n_ctx, nothing else) and /tokenize reach a team session's
    chat, with the server's own key upstream; neither is counted against the user."""
    props = {
        "default_generation_settings": {"n_ctx": 2048, "temperature": 0.8},
        "model_path": "/srv/private/models/secret.gguf",
        "chat_template": "{{ messages }}",
        "build_info": "b1234",
    }

    async def body() -> None:
        with fake_server(
            api_key=REAL_KEY, props=props, tokenize_count=5,
            model_fields={"meta": {"n_ctx_train": 8192}},
        ) as fake:  # fmt: skip
            async with pass_through(fake) as srv:
                base = srv.http + "model/v1"  # what chat makes of MODEL_SERVER_URL
                alice = srv.ctx.model_keys.key_for("alice")
                shown = await srv.fetch("model/props", key(srv, "alice"))
                assert json.loads(shown.body) == {"default_generation_settings": {"n_ctx": 2048}}
                # chat's own code, as a team session runs it (its key, the pass-through's URL)
                reported = await asyncio.to_thread(api_context.reported, base, alice, MODEL)
                assert (reported.exact, reported.trained) == (2048, 8192)
                tokenizer = api_context.Tokenizer(base, alice)
                assert await asyncio.to_thread(tokenizer.count, MODEL, "hello world") == 5
                assert fake.state.tokenized == ["hello world"]
                assert "alice" not in srv.ctx.usage.snapshot()
                # Each only with its own method, only with a key, and nothing else at the root.
                refused = [
                    await srv.fetch("model/props", key(srv, "bob"), method="POST", body="{}"),
                    await srv.fetch("model/tokenize", key(srv, "bob")),
                    await srv.fetch("model/props", {}),
                    await srv.fetch("model/slots", key(srv, "bob")),
                    await srv.fetch("model/tokenize", key(srv, "bob"), method="POST", body="[1]"),
                ]
                assert [r.code for r in refused] == [405, 405, 401, 404, 400]
                assert error_message(refused[0]) == "/props takes GET"
            # A server with no /props (vLLM): its 404 passes as it is.
            fake.state.props = None
            async with pass_through(fake) as srv:
                missing = await srv.fetch("model/props", key(srv, "alice"))
                assert missing.code == 404 and b"secret" not in missing.body

    run(body)


def test_chunks_are_passed_on_as_they_come_not_at_the_end() -> None:
    async def body() -> None:
        with fake_server(token_delay=0.001, holds=["**there**!"]) as fake:
            async with pass_through(fake) as srv:
                seen: list[bytes] = []
                request = ask(
                    srv, "alice", {**CHAT_BODY, "stream": True}, streaming_callback=seen.append
                )
                task = asyncio.ensure_future(request)
                # The model server holds the rest of its answer: what came must be here.
                await wait_for_async(lambda: b"there" in b"".join(seen), 10, "the first words")
                assert not task.done()
                fake.state.resume.set()
                resp = await task
                assert resp.code == 200 and b"[DONE]" in b"".join(seen)

    run(body)


# -- faults ---------------------------------------------------------------------------------
def test_a_model_server_that_dies_mid_answer_leaves_the_partial_answer_and_an_end() -> None:
    async def body() -> None:
        with fake_server(scenario="cut", token_delay=0.001, holds=["there"]) as fake:
            async with pass_through(fake) as srv:
                seen: list[bytes] = []
                task = asyncio.ensure_future(
                    ask(srv, "alice", {**CHAT_BODY, "stream": True}, streaming_callback=seen.append)
                )
                # What came before the model server dies is with the client (a reset may
                # drop what was still in flight), then it dies.
                await wait_for_async(lambda: b"there" in b"".join(seen), 10, "the first words")
                fake.state.resume.set()
                assert (await task).code == 200
                got = events(b"".join(seen))
                text = "".join(e["choices"][0]["delta"].get("content", "") for e in got[:-1])
                assert text.startswith("Hello **there**!"), text
                assert fake.state.answer.startswith(text)
                # ...then an end that says why, and the stream's end.
                assert "cut mid-answer" in got[-1]["error"]["message"]
                # No usage came: the text events are counted, not nothing.
                usage = srv.ctx.usage.snapshot()["alice"]
                assert (usage.completion_today, usage.active) == (len(got) - 2, 0)
                assert usage.prompt_today == 1  # "hi": a token per four characters

    run(body)


def test_an_unreachable_model_server_is_a_502_with_one_line() -> None:
    async def body() -> None:
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{closed.getsockname()[1]}"
            async with running_server(auth="proxy", model_server_url=url) as srv:
                resp = await ask(srv, "alice", CHAT_BODY)
                assert resp.code == 502
                assert error_message(resp) == (
                    f"cannot reach the model server at {url[7:]} (Connection refused)"
                )

    run(body)


def test_a_model_server_that_refuses_the_servers_key_is_a_502_for_the_admin() -> None:
    async def body() -> None:
        with fake_server(api_key="sk-another-key") as fake:
            async with pass_through(fake) as srv:
                resp = await ask(srv, "alice", {**CHAT_BODY, "stream": True})
                # Not a 401: the user's key was fine, and nothing they do can fix it.
                assert resp.code == 502
                assert "refused the terminal server's own key" in error_message(resp)

    run(body)


def test_a_body_over_the_bound_is_refused_before_it_is_read() -> None:
    async def body() -> None:
        with fake_server() as fake:
            async with pass_through(fake) as srv:
                big = {**CHAT_BODY, "pad": "x" * (5 * 1024 * 1024)}
                resp = await ask(srv, "alice", big)
                assert resp.code == 413
                resp = await srv.fetch("model/v1/chat/completions", {}, method="POST", body="{}")
                assert resp.code == 401
                resp = await srv.fetch(
                    "model/v1/chat/completions", key(srv, "alice"), method="POST", body="[1]"
                )
                assert resp.code == 400 and "JSON object" in error_message(resp)
                assert fake.state.requests == []

    run(body)


# -- limits ---------------------------------------------------------------------------------
def test_concurrent_requests_per_user_are_limited_with_a_clear_429() -> None:
    async def body() -> None:
        with fake_server(scenario="hang") as fake:
            async with pass_through(fake, user_model_concurrency=1) as srv:
                first = asyncio.ensure_future(ask(srv, "alice", {**CHAT_BODY, "stream": True}))
                await wait_for_async(lambda: fake.state.requests, 10, "the first request")
                second = await ask(srv, "alice", {**CHAT_BODY, "stream": True})
                assert second.code == 429
                assert "1 model requests running" in error_message(second)
                assert json.loads(second.body)["error"]["code"] == "rate_limit_exceeded"
                # Bob is not held back by Alice's request, nor is listing models.
                assert (await ask(srv, "alice", path="models")).code == 200
                fake.state.scenario = "ok"
                fake.state.release.set()
                assert (await first).code == 200
                assert (await ask(srv, "bob", {**CHAT_BODY, "stream": True})).code == 200
                assert srv.ctx.usage.snapshot()["alice"].refused == 1

    run(body)


def test_requests_to_the_model_server_are_bounded_for_all_users_together() -> None:
    async def body() -> None:
        with fake_server(scenario="hang") as fake:
            async with pass_through(fake, model_concurrency=1) as srv:
                first = asyncio.ensure_future(ask(srv, "alice", {**CHAT_BODY, "stream": True}))
                await wait_for_async(lambda: fake.state.requests, 10, "the first request")
                for user, path in (("bob", "chat/completions"), ("bob", "models")):
                    resp = await ask(srv, user, CHAT_BODY if path != "models" else None, path)
                    assert resp.code == 503, path
                    assert "pass-through is busy (1 requests running)" in error_message(resp)
                fake.state.scenario = "ok"
                fake.state.release.set()
                assert (await first).code == 200
                assert (await ask(srv, "bob", CHAT_BODY)).code == 200

    run(body)


def test_the_daily_quota_is_a_429_that_chat_shows_as_one_line(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"

    async def body() -> None:
        with fake_server(scenario="usage") as fake:
            async with pass_through(fake, user_daily_tokens=10, audit_log=audit) as srv:
                first = await ask(srv, "alice", {**CHAT_BODY, "stream": True})
                assert first.code == 200  # under the quota when it started; now over it
                refused = await ask(srv, "alice", {**CHAT_BODY, "stream": True})
                assert refused.code == 429
                assert "daily model quota of 10 tokens is used up" in error_message(refused)
                assert (await ask(srv, "bob", CHAT_BODY)).code == 200  # his own quota
                url = srv.http + "model"
                env = chat_env(tmp_path, url, VLLM_API_KEY=srv.ctx.model_keys.key_for("alice"))
                done = await asyncio.to_thread(
                    subprocess.run, [*CHAT, "Hello?"], env=env, capture_output=True, text=True,
                    timeout=60, check=False,
                )  # fmt: skip
                assert done.returncode != 0 and done.stdout == ""
                lines = done.stderr.strip().splitlines()
                assert len(lines) == 1, done.stderr
                assert "429" in lines[0] and "daily model quota of 10 tokens" in lines[0]

    run(body)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    refusals = [r for r in records if r["event"] == "quota_refused"]
    assert [r["user"] for r in refusals] == ["alice", "alice"]
    assert all(r["quota"] == 10 for r in refusals)


# A model server that streams forever (in its own process: its memory is not ours).
ENDLESS = r"""
from http.server import BaseHTTPRequestHandler, HTTPServer
EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"w" * 900 + b'"}}]}\n\n'
BLOCK = EVENT * 64
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK))
        except OSError:
            pass
server = HTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def endless_model() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", ENDLESS], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{proc.stdout.readline().strip()}"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_a_client_that_never_reads_holds_the_model_server_back_not_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ModelPassThrough, "write_timeout", 2.0)

    async def body() -> None:
        with endless_model() as url:
            async with running_server(auth="proxy", model_server_url=url) as srv:
                Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again
                before = _rss_kib("VmHWM")
                _, writer = await _stalled_client(srv)
                try:
                    await wait_for_async(lambda: srv.ctx.usage.active("alice") == 1, 10, "start")
                    # The client reads nothing: the request ends at the write timeout, and
                    # until then the model server waits (at loopback speed it would have
                    # sent gigabytes).
                    await wait_for_async(lambda: srv.ctx.usage.active("alice") == 0, 30, "end")
                finally:
                    writer.transport.abort()
                grown_mib = (_rss_kib("VmHWM") - before) / 1024
                assert grown_mib < 16, f"{grown_mib:.0f} MiB held for a client that never read"

    run(body)


async def _stalled_client(srv: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = json.dumps({**CHAT_BODY, "stream": True}).encode()
    auth = key(srv, "alice")["Authorization"]
    writer.write(
        f"POST /model/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
        f"Authorization: {auth}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return reader, writer


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_usage_is_read_however_the_stream_is_cut_into_chunks(newline: bytes, piece: int) -> None:
    stream = sse_body("one two three", usage=True).replace(b"\n", newline)
    without = sse_body("one two three", usage=False).replace(b"\n", newline)
    for strip, expected in ((True, without), (False, stream)):
        counter = StreamCounter(strip_usage=strip)
        out = b"".join(counter.feed(stream[i : i + piece]) for i in range(0, len(stream), piece))
        assert out + counter.flush() == expected
        assert counter.used() == (7, 3)
    # Cut in the middle of an event: the half event is not passed on.
    counter = StreamCounter(strip_usage=False)
    half = stream.index(b"three") + 2
    out = b"".join(counter.feed(stream[i : min(i + piece, half)]) for i in range(0, half, piece))
    assert (
        out + counter.flush(whole=False)
        == stream[: stream.rindex(newline * 2, 0, half) + 2 * len(newline)]
    )


def test_a_client_that_leaves_closes_the_model_servers_connection() -> None:
    async def body() -> None:
        asked, closed = asyncio.Event(), asyncio.Event()

        async def model(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")  # the request (its small body stays unread)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
            writer.write(b"%x\r\n%s\r\n" % (len(FIRST), FIRST))
            asked.set()
            while await reader.read(65536):  # then thinks, until the other end hangs up
                pass
            closed.set()
            writer.close()

        server = await asyncio.start_server(model, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with running_server(auth="proxy", model_server_url=url) as srv:
                _, writer = await _stalled_client(srv)
                await asyncio.wait_for(asked.wait(), 10)
                writer.transport.abort()  # Ctrl-C in chat: the connection goes
                await asyncio.wait_for(closed.wait(), 10)
                await wait_for_async(lambda: srv.ctx.usage.active("alice") == 0, 10, "release")
        finally:
            server.close()
            await server.wait_closed()

    run(body)


FIRST = b'data: {"choices":[{"index":0,"delta":{"content":"Hmm"}}]}\n\n'
