"""Talking to the model server: discovery (stdlib, for a fast start) and streaming (openai SDK).

The openai SDK takes about a second to import, so it is imported on first use (or warmed up
in the background by the REPL) and never at start-up.
"""

from __future__ import annotations

import importlib
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chat_cli import errors
from chat_cli.errors import ChatError

if TYPE_CHECKING:
    from openai import OpenAI

CONTEXT_HINTS = ("context length", "context window", "maximum context", "too long", "exceed")


@dataclass(frozen=True)
class Sampling:
    model: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None

    def request_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model}
        for name in ("temperature", "top_p", "max_tokens", "seed"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        return params


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool


@dataclass
class Answer:
    """What came back for one request, filled in as the stream goes."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    ended_at: float | None = None
    chunks: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    done: bool = False  # [DONE] seen
    events: int = 0  # server-sent events received

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
        return self.usage.completion_tokens / span if span > 0 else None


def _estimate_tokens(chars: int) -> int:
    """About four characters per token: only used when the server reports no usage."""
    return math.ceil(chars / 4)


def fetch_models(base_url: str, api_key: str | None, timeout: float = 10.0) -> list[str]:
    """GET /v1/models with the stdlib (no SDK import needed at start-up)."""
    request = urllib.request.Request(base_url + "/models")  # noqa: S310 (http(s) only, see config)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise errors.AuthFailed(base_url) from err
        raise errors.ServerFailed(err.code, _body_message(err.read(), str(err.reason))) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise errors.ServerUnreachable(base_url, errors.short(str(reason))) from err
    except ValueError as err:
        raise errors.ServerFailed(200, "/v1/models did not return JSON") from err
    try:
        return [str(item["id"]) for item in body["data"]]
    except (KeyError, TypeError) as err:
        raise errors.ServerFailed(200, "/v1/models returned an unexpected shape") from err


def wait_for_models(
    base_url: str,
    api_key: str | None,
    seconds: float,
    progress: Callable[[str], None],
) -> list[str]:
    """Poll /v1/models until it lists a model; report what we are waiting for."""
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    last = "no answer yet"
    while True:
        try:
            models = fetch_models(base_url, api_key, timeout=5.0)
            if models:
                return models
            last = "/v1/models lists no model yet"
        except errors.AuthFailed:
            raise
        except errors.ServerFailed as err:
            last = f"server up, model not ready ({err.status}: {err.detail})"
        except ChatError as err:
            last = str(err).split(";")[0]
        now = time.monotonic()
        if now >= deadline:
            raise errors.WaitTimeout(base_url, seconds, last)
        progress(f"waiting for {base_url} ({now - start:.0f}/{seconds:.0f} s): {last}")
        time.sleep(min(0.5, max(0.0, deadline - now)))


class ChatClient:
    def __init__(self, base_url: str, api_key: str | None, stall_timeout: float) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.stall_timeout = stall_timeout
        self._sdk: OpenAI | None = None

    def models(self) -> list[str]:
        return fetch_models(self.base_url, self.api_key)

    def close(self) -> None:
        """Close the SDK's pooled connections (the process exit does it for the CLI)."""
        if self._sdk is not None:
            self._sdk.close()
            self._sdk = None

    @property
    def sdk(self) -> OpenAI:
        if self._sdk is None:
            from openai import OpenAI, Timeout  # noqa: PLC0415 (slow import, ~1 s)

            self._sdk = OpenAI(
                base_url=self.base_url,
                api_key=self.api_key or "no-key",
                max_retries=0,
                timeout=Timeout(self.stall_timeout, connect=10.0),
            )
        return self._sdk

    def stream(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling,
        answer: Answer,
        *,
        stream: bool = True,
        completions: bool = False,
    ) -> Generator[tuple[str, str], None, None]:
        """Yield ("content" | "reasoning", text) pieces, filling `answer` as they come.

        Raises ChatError subclasses only. Closing the generator (Ctrl-C) closes the response.
        """
        import openai  # noqa: PLC0415 (slow import, ~1 s)

        started = False
        try:
            params = sampling.request_params()
            if completions:
                params["prompt"] = "\n".join(m["content"] for m in messages) + "\n"
                api: Any = self.sdk.completions
            else:
                params["messages"] = messages
                api = self.sdk.chat.completions
            if not stream:
                response = api.create(**params)
                started = True
                yield from self._whole(response, answer, completions)
                return
            params["stream"] = True
            params["stream_options"] = {"include_usage": True}
            # The raw response: the SDK's per-chunk model building costs ~0.1 ms a token,
            # more than rendering; parsing the SSE lines here is several times cheaper.
            with api.with_streaming_response.create(**params) as response:
                started = True
                timeout_error, transport_error = _transport_errors(response.http_response)
                try:
                    yield from _pieces(_sse_events(response.iter_lines()), answer, completions)
                except timeout_error as err:
                    if answer.finish_reason is None:
                        raise errors.stalled(self.stall_timeout) from err
                except transport_error as err:
                    # After finish_reason only [DONE] (and vLLM's usage chunk) can be lost:
                    # the answer is whole. Before it, it is not, however much text came.
                    if answer.events and answer.finish_reason is None:
                        raise errors.connection_cut() from err
            # finish_reason, not [DONE], says the answer ended: vLLM and llama.cpp always
            # send it; llama-cpp-python sends [DONE] without it when it drops an answer for
            # another request.
            if answer.finish_reason is None:
                if answer.events == 0:
                    # llama.cpp ends (or drops) the stream without a word when the request
                    # cannot run, e.g. a prompt over the context size; asked without
                    # streaming, it says why.
                    del params["stream"], params["stream_options"]
                    # Retries: the pooled connection may be the one the server just dropped.
                    again = self.sdk.with_options(max_retries=2)
                    api = again.completions if completions else again.chat.completions
                    yield from self._whole(api.create(**params), answer, completions)
                    return
                raise errors.incomplete_stream(answer.done)
        except openai.APITimeoutError as err:
            raise errors.stalled(self.stall_timeout) from err
        except openai.APIConnectionError as err:
            if started:
                raise errors.connection_cut() from err
            reason = errors.short(str(err.__cause__ or err))
            raise errors.ServerUnreachable(self.base_url, reason) from err
        except openai.AuthenticationError as err:
            raise errors.AuthFailed(self.base_url) from err
        except openai.NotFoundError as err:
            try:
                served = self.models()
            except ChatError:
                served = []
            if sampling.model in served:
                raise errors.BadRequest(404, _detail(err)) from err
            raise errors.ModelNotFound(sampling.model, served) from err
        except openai.APIStatusError as err:
            detail = _detail(err)
            if err.status_code >= 500:
                raise errors.ServerFailed(err.status_code, detail) from err
            if err.status_code in (400, 413) and any(h in detail.lower() for h in CONTEXT_HINTS):
                raise errors.ContextTooLong(detail) from err
            raise errors.BadRequest(err.status_code, detail) from err
        except openai.APIError as err:
            raise errors.error_event(_detail(err)) from err
        finally:
            answer.ended_at = time.monotonic()
            if answer.usage is None:
                prompt_chars = sum(len(m["content"]) for m in messages)
                answer.usage = Usage(_estimate_tokens(prompt_chars), answer.chunks, True)

    def _whole(self, response: Any, answer: Answer, completions: bool) -> Iterator[tuple[str, str]]:
        answer.first_token_at = time.monotonic()
        if response.usage is not None:
            answer.usage = Usage(
                int(response.usage.prompt_tokens or 0),
                int(response.usage.completion_tokens or 0),
                False,
            )
        if not response.choices:
            raise errors.malformed_stream("no choices in the response")
        choice = response.choices[0]
        answer.finish_reason = str(choice.finish_reason or "stop")
        if completions:
            text = choice.text or ""
        else:
            message = choice.message
            reasoning = getattr(message, "reasoning_content", None) or getattr(
                message, "reasoning", None
            )
            if reasoning:
                answer.reasoning.append(reasoning)
                yield "reasoning", reasoning
            text = message.content or ""
        answer.chunks = _estimate_tokens(len(text))
        answer.content.append(text)
        yield "content", text


def _detail(err: Exception) -> str:
    body = getattr(err, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        message = message or body.get("message") or body.get("detail")
    return errors.short(str(message or getattr(err, "message", None) or err))


def _transport_errors(http_response: Any) -> tuple[type[Exception], type[Exception]]:
    """The HTTP library's timeout and transport errors (httpx, or httpx2 in openai 3)."""
    library = importlib.import_module(type(http_response).__module__.split(".")[0])
    return library.TimeoutException, library.RequestError


def _sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
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


def _pieces(
    events: Iterable[tuple[str, str]], answer: Answer, completions: bool
) -> Iterator[tuple[str, str]]:
    for event, data in events:
        answer.events += 1
        if data == "[DONE]":
            answer.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError as err:
            raise errors.malformed_stream(f"not JSON: {errors.short(data, 60)}") from err
        if not isinstance(chunk, dict):
            raise errors.malformed_stream(f"not an object: {errors.short(data, 60)}")
        if chunk.get("error") or event == "error":
            raise errors.error_event(_error_message(chunk))
        try:
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
        except (AttributeError, TypeError, ValueError) as err:
            raise errors.malformed_stream(f"unexpected chunk: {errors.short(data, 60)}") from err


def _body_message(body: bytes, fallback: str) -> str:
    """The message of an error body: OpenAI-style JSON, or its text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return errors.short(text or fallback)
    return _error_message(data) if isinstance(data, dict) else errors.short(text)


def _error_message(chunk: dict[str, Any]) -> str:
    inner = chunk.get("error", chunk)
    message = inner.get("message") if isinstance(inner, dict) else inner
    return errors.short(str(message or "unknown error"))
