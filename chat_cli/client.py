"""Talking to the model server: discovery (stdlib, for a fast start) and streaming (openai SDK).

The openai SDK takes about a second to import, so it is imported on first use (or warmed up
in the background by the REPL) and never at start-up.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chat_cli import errors, sse
from chat_cli.answer import Answer, Usage, estimate_tokens
from chat_cli.errors import ChatError
from chat_cli.sse import Piece

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
        raise errors.ServerFailed(err.code, _body_message(err.read())) from err
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
        cancel: Cancel | None = None,
    ) -> Iterator[Piece]:
        """Yield ("content" | "reasoning", text) pieces, filling `answer` as they come.

        Raises ChatError subclasses only. `cancel` stops the request from another thread.
        """
        import openai  # noqa: PLC0415 (slow import, ~1 s)

        cancel = cancel or Cancel()
        params = sampling.request_params()
        if completions:
            params["prompt"] = "\n".join(m["content"] for m in messages) + "\n"
        else:
            params["messages"] = messages
        try:
            if stream:
                yield from self._streamed(params, answer, completions, cancel)
            else:
                response = _endpoint(self.sdk, completions).create(**params)
                if not cancel.cancelled:
                    yield from _whole(response, answer, completions)
        except openai.APIError as err:
            raise self._api_error(err, sampling.model) from err
        finally:
            answer.end(sum(len(m["content"]) for m in messages))

    def _streamed(
        self, params: dict[str, Any], answer: Answer, completions: bool, cancel: Cancel
    ) -> Iterator[Piece]:
        import openai  # noqa: PLC0415 (imported by stream() already)

        streaming = {**params, "stream": True, "stream_options": {"include_usage": True}}
        # The raw response: see chat_cli.sse for why the SDK's chunk objects are skipped.
        endpoint = _endpoint(self.sdk, completions)
        with endpoint.with_streaming_response.create(**streaming) as response:
            cancel.attach(response.http_response)
            try:
                yield from self._read(response, answer, completions)
            finally:
                cancel.detach()
        # finish_reason, not [DONE], says the answer ended: vLLM and llama.cpp always send it;
        # llama-cpp-python sends [DONE] without it when it drops an answer for another request.
        if cancel.cancelled or answer.finish_reason is not None:
            return
        if answer.events:
            raise errors.incomplete_stream(answer.done)
        # llama.cpp ends (or drops) the stream without a word when the request cannot run,
        # e.g. a prompt over the context size; asked without streaming, it says why.
        # Retries: the pooled connection may be the one the server just dropped.
        retrying = self.sdk.with_options(max_retries=2)
        try:
            whole = _endpoint(retrying, completions).create(**params)
        except openai.APITimeoutError:
            raise
        except openai.APIConnectionError as err:
            raise errors.connection_cut() from err
        yield from _whole(whole, answer, completions)

    def _read(self, response: Any, answer: Answer, completions: bool) -> Iterator[Piece]:
        timeout_error, transport_error = _transport_errors(response.http_response)
        try:
            yield from sse.pieces(sse.events(response.iter_lines()), answer, completions)
        except timeout_error as err:
            if answer.finish_reason is None:
                raise errors.stalled(self.stall_timeout) from err
        except transport_error as err:
            # After finish_reason only [DONE] (and vLLM's usage chunk) can be lost: the answer
            # is whole. Before it, it is not, however much text came.
            if answer.events and answer.finish_reason is None:
                raise errors.connection_cut() from err

    def _api_error(self, err: Exception, model: str) -> ChatError:
        import openai  # noqa: PLC0415 (imported by stream() already)

        if isinstance(err, openai.APITimeoutError):
            return errors.stalled(self.stall_timeout)
        if isinstance(err, openai.APIConnectionError):
            reason = errors.short(str(err.__cause__ or err))
            return errors.ServerUnreachable(self.base_url, reason)
        if isinstance(err, openai.APIStatusError):
            return self._status_error(err, model)
        return errors.error_event(_detail(err))

    def _status_error(self, err: Any, model: str) -> ChatError:
        import openai  # noqa: PLC0415 (imported by stream() already)

        if isinstance(err, openai.AuthenticationError):
            return errors.AuthFailed(self.base_url)
        detail = _detail(err)
        if isinstance(err, openai.NotFoundError):
            try:
                served = self.models()
            except ChatError:
                served = []
            if model in served:
                return errors.BadRequest(404, detail)
            return errors.ModelNotFound(model, served)
        if err.status_code >= 500:
            return errors.ServerFailed(err.status_code, detail)
        if err.status_code in (400, 413) and any(h in detail.lower() for h in CONTEXT_HINTS):
            return errors.ContextTooLong(detail)
        return errors.BadRequest(err.status_code, detail)


class Cancel:
    """Stops a request from another thread: a flag the request checks, and a hang-up of its
    streaming response's socket, which wakes a read blocked on it (closing it would not)."""

    def __init__(self) -> None:
        self.cancelled = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    def attach(self, http_response: Any) -> None:
        network = http_response.extensions.get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._socket = sock
            if self.cancelled:
                _hang_up(sock)

    def detach(self) -> None:
        """The response is over: its connection may go back to the pool, not to be hung up."""
        with self._lock:
            self._socket = None

    def cancel(self) -> bool:
        """Stop the request; True if a read under way was woken (the request ends soon)."""
        with self._lock:
            self.cancelled = True
            if self._socket is None:
                return False
            _hang_up(self._socket)
            return True


def _hang_up(sock: socket.socket) -> None:
    # The plain socket's shutdown, also under TLS: the reader thread still holds the TLS state.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _endpoint(sdk: OpenAI, completions: bool) -> Any:
    return sdk.completions if completions else sdk.chat.completions


def _whole(response: Any, answer: Answer, completions: bool) -> Iterator[Piece]:
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
    answer.chunks = estimate_tokens(len(text))
    answer.content.append(text)
    yield "content", text


def _detail(err: Exception) -> str:
    body = getattr(err, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        message = message or body.get("message") or body.get("detail")
    elif isinstance(body, str):  # not JSON: the SDK's own message would be "Error code: 502"
        return errors.body_line(body)
    return errors.short(str(message or getattr(err, "message", None) or err))


def _transport_errors(http_response: Any) -> tuple[type[Exception], type[Exception]]:
    """The HTTP library's timeout and transport errors (httpx, or httpx2 in openai 3)."""
    library = importlib.import_module(type(http_response).__module__.split(".")[0])
    return library.TimeoutException, library.RequestError


def _body_message(body: bytes) -> str:
    """The message of an error body: OpenAI-style JSON, or its first line of text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return errors.body_line(text)
    return sse.error_message(data) if isinstance(data, dict) else errors.short(text)
