"""A fault-injecting OpenAI-compatible server for tests and benchmarks only (never shipped).

It speaks real HTTP/1.1 with chunked SSE over a real socket. The behaviour of a request is
chosen by `server.scenario`, or per request by a last user message starting with
`@fault:NAME` (handy when driving the REPL through a PTY).

Scenarios: ok, usage (ok + a usage chunk, like vLLM), reasoning, slow, http401, http404,
http400ctx, http400vision, http500, error_event, malformed, no_done, cut, stall, stall_empty, hang,
empty_ctx (an empty 200 stream, then 400 when asked without streaming: what llama.cpp does
on context overflow).
Around the end of a whole answer: finish_cut (finish_reason, then the socket dies),
finish_no_done (finish_reason, then a clean end without [DONE]), cut_before_finish (all the
text, then the socket dies before finish_reason), done_no_finish ([DONE] after a few words
without finish_reason: llama-cpp-python's server does this when another request interrupts).
Tool calls, asked for in the last user message: `@fault:call NAME ARGS | NAME ARGS...` answers
with those calls in one answer (each call's arguments streamed in 3-character pieces,
the calls' pieces interleaved), then, once the last message is a tool result, with
"tool said: RESULT / RESULT..."; `@fault:loop NAME ARGS` calls that tool in every answer.
Bodies that are not a stream: html (a proxy's 200 page), whole_json (a whole completion
although a stream was asked for). The context window: `model_fields` (vLLM's max_model_len,
llama-server's meta), `props` (llama-server's /props), `models_body` (an odd /v1/models),
`tokenize_count` (/tokenize), `prompt_tokens` (the usage chunk's). `token_delay` also delays
a non-streamed answer, by as much as its tokens would take to stream.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "fake-model"
DEFAULT_ANSWER = "Hello **there**! This is a test answer.\n\n- one\n- two\n"
NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@dataclass
class FakeState:
    scenario: str = "ok"
    answer: str = DEFAULT_ANSWER
    reasoning: str = "Let me think about this carefully."  # the reasoning scenario's
    error_message: str = "engine crashed: CUDA out of memory"  # http500's
    api_key: str | None = None
    models: list[str] = field(default_factory=lambda: [MODEL, "other-model"])
    token_delay: float = 0.0
    loading_until: float = 0.0  # /v1/models answers 503 until this monotonic time
    requests: list[dict[str, Any]] = field(default_factory=list)
    raw_sse: bytes | None = None  # when set, sent verbatim as the whole stream body
    release: threading.Event = field(default_factory=threading.Event)
    # A streamed answer stops after the first piece that holds holds[0], until `resume` is
    # set; then the next hold applies.
    holds: list[str] = field(default_factory=list)
    resume: threading.Event = field(default_factory=threading.Event)
    # Answer with `Connection: close`, as some proxies and servers do: http.client then lets
    # go of the connection's socket.
    connection_close: bool = False
    # Added to each model of /v1/models: vLLM's {"max_model_len": N}, llama-server's "meta".
    model_fields: dict[str, Any] = field(default_factory=dict)
    props: dict[str, Any] | None = None  # llama-server's GET /props; None: 404
    models_body: Any = None  # when set, /v1/models answers it as is (a string: not JSON)
    tokenize_count: int | None = None  # POST /tokenize answers {"count": N}; None: 404
    tokenized: list[str] = field(default_factory=list)  # the texts /tokenize was asked for
    prompt_tokens: int = 7  # what a usage chunk reports


def tokens(text: str) -> list[str]:
    """Split text into word-ish pieces, the way a tokenizer's deltas arrive."""
    out: list[str] = []
    word = ""
    for char in text:
        if char in " \n" and word:
            out.append(word)
            word = ""
        word += char
    if word:
        out.append(word)
    return out


def chunk(delta: dict[str, Any], finish: str | None = None, completions: bool = False) -> bytes:
    if completions:
        choice: dict[str, Any] = {
            "index": 0,
            "text": delta.get("content", ""),
            "finish_reason": finish,
        }
        obj = "text_completion"
    else:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        obj = "chat.completion.chunk"
    body = {"id": "c1", "object": obj, "created": 0, "model": MODEL, "choices": [choice]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def sse_body(
    answer: str, *, usage: bool = False, completions: bool = False, prompt_tokens: int = 7
) -> bytes:
    parts = [chunk({"role": "assistant", "content": ""}, completions=completions)]
    pieces = tokens(answer)
    parts += [chunk({"content": p}, completions=completions) for p in pieces]
    parts.append(chunk({}, "stop", completions=completions))
    if usage:
        body = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(pieces),
                "total_tokens": 0,
            },
        }
        parts.append(b"data: " + json.dumps(body).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def state(self) -> FakeState:
        return self.server.state

    def _json(self, status: int, body: Any) -> None:
        self._raw(status, "application/json", json.dumps(body).encode())

    def _raw(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self._connection_header()
        self.end_headers()
        self.wfile.write(data)

    def _connection_header(self) -> None:
        if self.state.connection_close:
            self.send_header("Connection", "close")

    def _authorized(self) -> bool:
        key = self.state.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._json(401, {"error": {"message": "Invalid API key", "code": 401}})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.rstrip("/") == "/v1/models":
            if time.monotonic() < self.state.loading_until:
                self._json(503, {"error": {"message": "Loading model", "code": 503}})
                return
            body = self.state.models_body
            if isinstance(body, str):
                self._raw(200, "text/plain", body.encode())
                return
            if body is not None:
                self._json(200, body)
                return
            data = [
                {"id": m, "object": "model", "owned_by": "test", **self.state.model_fields}
                for m in self.state.models
            ]
            self._json(200, {"object": "list", "data": data})
        elif self.path == "/props" and self.state.props is not None:
            self._json(200, self.state.props)
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path in ("/tokenize", "/extras/tokenize/count"):
            if not self._authorized():
                return
            self.state.tokenized.append(request.get("prompt", ""))
            if self.state.tokenize_count is None:
                self._json(404, {"detail": "Not Found"})
            else:
                self._json(200, {"count": self.state.tokenize_count})
            return
        self.state.requests.append(request)
        if not self._authorized():
            return
        completions = self.path.rstrip("/") == "/v1/completions"
        scenario = self.state.scenario
        messages = request.get("messages") or []
        last = messages[-1]["content"] if messages else request.get("prompt", "")
        if isinstance(last, list):  # parts: a question with images
            last = " ".join(str(p.get("text") or "") for p in last if isinstance(p, dict))
        if isinstance(last, str) and "@fault:" in last:
            scenario = last.split("@fault:", 1)[1].split()[0]
        user = next((m.get("content") for m in reversed(messages) if m["role"] == "user"), "")
        if isinstance(user, str) and ("@fault:call" in user or "@fault:loop" in user):
            self._tools(request, user)
            return
        if request.get("model") not in self.state.models:
            self._json(
                404, {"error": {"message": f"The model `{request.get('model')}` does not exist."}}
            )
            return
        if scenario.startswith("http"):
            self._http_error(scenario)
            return
        if scenario == "empty_ctx":  # llama.cpp: empty 200 stream, 400 when not streamed
            if not request.get("stream"):
                self._http_error("http400ctx")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if scenario == "html":
            self._raw(200, "text/html", b"<html><body>Welcome to the proxy</body></html>\n")
            return
        if not request.get("stream") or scenario == "whole_json":
            if scenario == "hang":
                self.state.release.wait(60)
            time.sleep(self.state.token_delay * len(tokens(self.state.answer)))
            self._whole(request, completions)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self._connection_header()
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._stream(scenario, completions, request)

    def _http_error(self, scenario: str) -> None:
        if scenario == "http401":
            self._json(401, {"error": {"message": "bad key"}})
        elif scenario == "http404":
            self._json(404, {"error": {"message": "The model `x` does not exist."}})
        elif scenario == "http400ctx":
            message = (
                "This model's maximum context length is 2048 tokens. However, you requested "
                "4100 tokens. Please reduce the length of the messages."
            )
            self._json(400, {"error": {"message": message, "type": "BadRequestError"}})
        elif scenario == "http400vision":  # vLLM, a text-only model given an image
            message = (
                'Traceback (most recent call last):\n  File "serving_chat.py", line 212\n'
                "ValueError: fake-model is not a multimodal model"
            )
            self._json(400, {"error": {"message": message, "type": "BadRequestError"}})
        elif scenario in ("http502", "http502empty"):  # a proxy in front of a server that is down
            page = NGINX_502.encode() if scenario == "http502" else b""
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        else:
            self._json(500, {"error": {"message": self.state.error_message}})

    def _whole(self, request: dict[str, Any], completions: bool, text: str = "") -> None:
        answer = text or self.state.answer
        if completions:
            choice: dict[str, Any] = {"index": 0, "text": answer, "finish_reason": "stop"}
        else:
            message = {"role": "assistant", "content": answer}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
        usage = {"prompt_tokens": 5, "completion_tokens": len(tokens(answer)), "total_tokens": 0}
        self._json(
            200,
            {
                "id": "c1",
                "object": "x",
                "created": 0,
                "model": MODEL,
                "choices": [choice],
                "usage": usage,
            },
        )

    def _tools(self, request: dict[str, Any], user: str) -> None:
        messages = request["messages"]
        if messages[-1]["role"] == "tool" and "@fault:call" in user:
            said: list[str] = []
            for message in reversed(messages):  # this round's results: the trailing ones
                if message["role"] != "tool":
                    break
                said.insert(0, message["content"][:200])
            answer = "tool said: " + " / ".join(said)
            if not request.get("stream"):
                self._whole(request, False, answer)
                return
            self._raw(200, "text/event-stream", sse_body(answer))
            return
        spec = user.split("@fault:", 1)[1].split(" ", 1)[1]
        calls = []
        for n, part in enumerate(spec.split(" | ")):
            name, _, args = part.strip().partition(" ")
            calls.append((n, f"call_{len(messages)}_{n}", name, args))
        if not request.get("stream"):
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": i, "type": "function", "function": {"name": name, "arguments": a}}
                    for _, i, name, a in calls
                ],
            }
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            self._json(200, {"id": "c1", "object": "x", "model": MODEL, "choices": [choice]})
            return
        parts = [chunk({"role": "assistant", "content": None})]
        for n, call_id, name, _ in calls:
            first = {"index": n, "id": call_id, "type": "function"}
            parts.append(chunk({"tool_calls": [{**first, "function": {"name": name}}]}))
        for start in range(0, max(len(a) for *_, a in calls), 3):
            for n, *_, args in calls:
                if args[start : start + 3]:
                    piece = {"index": n, "function": {"arguments": args[start : start + 3]}}
                    parts.append(chunk({"tool_calls": [piece]}))
        parts += [chunk({}, "tool_calls"), b"data: [DONE]\n\n"]
        self._raw(200, "text/event-stream", b"".join(parts))

    def _send(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _pieces(self, completions: bool) -> Iterator[bytes]:
        for piece in tokens(self.state.answer):
            if self.state.token_delay:
                time.sleep(self.state.token_delay)
            yield chunk({"content": piece}, completions=completions)
            if self.state.holds and self.state.holds[0] in piece:
                self.state.holds.pop(0)
                self.state.resume.wait(60)
                self.state.resume.clear()

    def _stream(self, scenario: str, completions: bool, request: dict[str, Any]) -> None:
        if self.state.raw_sse is not None:
            self._send(self.state.raw_sse)
            self._send(b"")
            return
        if scenario == "hang":  # nothing at all until released, then a whole answer
            self.state.release.wait(60)
            scenario = "ok"
        if scenario in ("ok", "usage") and not self.state.token_delay:
            body = sse_body(
                self.state.answer,
                usage=scenario == "usage",
                completions=completions,
                prompt_tokens=self.state.prompt_tokens,
            )
            self._send(body)
            self._send(b"")
            return
        self._send(chunk({"role": "assistant", "content": ""}, completions=completions))
        if scenario == "stall_empty":  # the stream has started, but no text ever comes
            self.state.release.wait(60)
            return
        if scenario == "reasoning":
            for piece in tokens(self.state.reasoning):
                self._send(chunk({"reasoning_content": piece}))
        if scenario == "slow":
            for _ in range(2000):  # until the client hangs up
                self._send(chunk({"content": "word "}, completions=completions))
                time.sleep(0.02)
            return
        whole = ("ok", "usage", "reasoning", "finish_cut", "finish_no_done", "cut_before_finish")
        for index, data in enumerate(self._pieces(completions)):
            self._send(data)
            if scenario not in whole and index == 2:
                break
        if scenario == "error_event":
            self._send(b'data: {"error": {"message": "engine died mid-answer", "code": 500}}\n\n')
        elif scenario == "malformed":
            self._send(b"data: {this is not json\n\n")
        elif scenario == "no_done":
            self._send(b"")  # a clean end of the body, but no finish_reason and no [DONE]
            return
        elif scenario in ("cut", "cut_before_finish"):
            self._cut()
            return
        elif scenario == "stall":
            self.state.release.wait(60)
            return
        elif scenario != "done_no_finish":
            self._send(chunk({}, "stop", completions=completions))
            if scenario == "finish_cut":
                self._cut()
                return
            if scenario == "finish_no_done":
                self._send(b"")
                return
        self._send(b"data: [DONE]\n\n")
        self._send(b"")

    def _cut(self) -> None:
        self.wfile.write(b'40\r\ndata: {"trunc')  # half a chunk, then the socket dies
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: FakeState | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = state or FakeState()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-stream (Ctrl-C, cut tests) are normal here, not news."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.release.set()
        self.shutdown()
        self.server_close()


def main() -> None:
    """`python -m tests.fake_openai [scenario]`: run it by hand and print its URL."""
    server = FakeServer(FakeState(scenario=sys.argv[1] if len(sys.argv) > 1 else "ok")).start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
