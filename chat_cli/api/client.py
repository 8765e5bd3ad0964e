"""Talking to the model server: discovery, and one request per answer (stdlib HTTP, see
chat_cli.api.transport; the response is parsed into events in chat_cli.api.sse)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from chat_cli import errors
from chat_cli.api import routing, sse, transport
from chat_cli.api.answer import Answer
from chat_cli.api.events import Event, Sent, ServerError
from chat_cli.api.transport import Cancel, Target, Timeout
from chat_cli.errors import ChatError

__all__ = ["Cancel", "ChatClient", "Sampling", "fetch_models", "wait_for_models"]

CONTEXT_HINTS = ("context length", "context window", "maximum context", "too long", "exceed")
DEFAULT_DEADLINE_S = 600.0


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
    """GET /v1/models."""
    target = Target.parse(base_url)
    try:
        conn = target.connect(timeout)
    except OSError as err:
        raise errors.ServerUnreachable(base_url, errors.short(str(err))) from err
    try:
        conn.request("GET", target.path("/models"), headers=transport.headers(api_key, False))
        response = conn.getresponse()
        body = transport.read_body(response, conn.sock, time.monotonic() + timeout)
    except (*transport.TransportError, Timeout) as err:
        raise errors.ServerUnreachable(base_url, errors.short(str(err) or "timed out")) from err
    finally:
        conn.close()
    if response.status == 401:
        raise errors.AuthFailed(base_url)
    if response.status >= 400:
        raise errors.ServerFailed(response.status, _body_message(body))
    try:
        return [str(item["id"]) for item in json.loads(body)["data"]]
    except ValueError as err:
        raise errors.ServerFailed(200, "/v1/models did not return JSON") from err
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
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        stall_timeout: float,
        deadline: float = DEFAULT_DEADLINE_S,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.stall_timeout = stall_timeout
        self.deadline = deadline
        self.target = Target.parse(base_url)

    def models(self) -> list[str]:
        return fetch_models(self.base_url, self.api_key)

    def close(self) -> None:
        """Nothing is pooled: each request closes its own connection."""

    def stream(
        self,
        messages: list[dict[str, Any]],
        sampling: Sampling,
        *,
        stream: bool = True,
        completions: bool = False,
        cancel: Cancel | None = None,
        tools: dict[str, Any] | None = None,
    ) -> Iterator[Event]:
        """Yield the answer's events (chat_cli.api.events); the caller builds its answer from
        them with Answer.apply.

        `tools` holds the request's `tools` and `tool_choice`. Raises ChatError subclasses
        only; NothingAnswered when the request brought no text (nor tool calls it offered
        tools for). `cancel` stops the request from another thread.
        """
        cancel = cancel or Cancel()
        params = sampling.request_params()
        if completions:
            params["prompt"] = "\n".join(text_of(m.get("content")) for m in messages) + "\n"
        else:
            params["messages"] = messages
            params.update(tools or {})
        # The client's own answer, built from the same events, to decide on; nobody else sees it.
        seen = Answer()
        request = self._streamed if stream else self._whole
        for event in request(params, seen, completions, cancel):
            if isinstance(event, ServerError):
                raise errors.error_event(event.message)
            seen.apply(event)
            yield event
        if cancel.cancelled or seen.text or (seen.calls and tools):
            return
        raise errors.nothing_answered(
            seen.finish_reason, [c.name for c in seen.tool_calls], bool(seen.reasoning_text)
        )

    def _post(
        self, completions: bool, params: dict[str, Any], cancel: Cancel
    ) -> tuple[Any, Any] | None:
        """Send the request; (connection, response) for a 2xx answer, None if cancelled."""
        endpoint = "/completions" if completions else "/chat/completions"
        body = json.dumps(params, ensure_ascii=False).encode("utf-8")
        try:
            conn = self.target.connect(transport.CONNECT_TIMEOUT_S)
        except OSError as err:
            raise errors.ServerUnreachable(self.base_url, errors.short(str(err))) from err
        try:
            cancel.attach(conn.sock)
            conn.sock.settimeout(self.deadline)  # the queue and the prompt come before byte 1
            path = self.target.path(endpoint)
            headers = transport.headers(self.api_key, True) | routing.session_headers(params)
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            if response.status >= 300:
                error_body = transport.read_body(response, conn.sock, time.monotonic() + 10.0)
        except TimeoutError as err:
            conn.close()
            raise errors.TimedOut(self.deadline, not params.get("stream")) from err
        except (*transport.TransportError, Timeout) as err:
            conn.close()
            if cancel.cancelled:
                return None
            reason = errors.short(str(err) or type(err).__name__)
            raise errors.ServerUnreachable(self.base_url, reason) from err
        if response.status >= 300:
            conn.close()
            raise self._status_error(response.status, error_body, response.reason, params)
        return conn, response

    def _streamed(
        self, params: dict[str, Any], seen: Answer, completions: bool, cancel: Cancel
    ) -> Iterator[Event]:
        streaming = {**params, "stream": True, "stream_options": {"include_usage": True}}
        yield Sent(time.monotonic())  # TTFT counts from the request leaving
        sent = self._post(completions, streaming, cancel)
        if sent is None:
            return
        conn, response = sent
        parser = sse.Parser(completions)
        try:
            content_type = (response.getheader("Content-Type") or "").lower()
            if content_type and "event-stream" not in content_type:
                body = transport.read_body(response, conn.sock, time.monotonic() + self.deadline)
                yield from sse.whole(body, content_type, completions)
                return
            yield from self._read(conn, response, seen, parser)
        finally:
            cancel.detach()
            conn.close()
        # finish_reason, not [DONE], says the answer ended: vLLM and llama.cpp always send it;
        # llama-cpp-python sends [DONE] without it when it drops an answer for another request.
        if cancel.cancelled or seen.finish_reason is not None:
            return
        if parser.frames:
            raise errors.incomplete_stream(seen.done)
        # llama.cpp ends (or drops) the stream without a word when the request cannot run,
        # e.g. a prompt over the context size; asked without streaming, it says why.
        try:
            yield from self._whole(params, seen, completions, cancel)
        except errors.ServerUnreachable as err:
            raise errors.connection_cut() from err

    def _read(self, conn: Any, response: Any, seen: Answer, parser: sse.Parser) -> Iterator[Event]:
        first_wait = max(0.001, seen.started + self.deadline - time.monotonic())
        lines = transport.Lines(
            response, conn.sock, first_wait=first_wait, stall=self.stall_timeout
        )
        try:
            yield from parser.parse(lines)
        except Timeout as err:
            if seen.finish_reason is None:
                if not err.started:
                    raise errors.TimedOut(self.deadline, whole=False) from err
                raise errors.stalled(self.stall_timeout) from err
        except transport.TransportError as err:
            # After finish_reason only [DONE] (and vLLM's usage chunk) can be lost: the answer
            # is whole. Before it, it is not, however much text came.
            if parser.frames and seen.finish_reason is None:
                raise errors.connection_cut() from err

    def _whole(
        self, params: dict[str, Any], seen: Answer, completions: bool, cancel: Cancel
    ) -> Iterator[Event]:
        yield Sent(time.monotonic())
        sent = self._post(completions, params, cancel)
        if sent is None:
            return
        conn, response = sent
        try:
            body = transport.read_body(response, conn.sock, seen.started + self.deadline)
        except Timeout as err:
            if cancel.cancelled:
                return
            raise errors.TimedOut(self.deadline, whole=True) from err
        except transport.TransportError as err:
            if cancel.cancelled:
                return
            raise errors.ServerUnreachable(self.base_url, errors.short(str(err))) from err
        finally:
            cancel.detach()
            conn.close()
        content_type = (response.getheader("Content-Type") or "").lower()
        yield from sse.whole(body, content_type, completions)

    def _status_error(
        self, status: int, body: bytes, reason: str, params: dict[str, Any]
    ) -> ChatError:
        detail = _body_message(body)
        if status == 401:
            return errors.AuthFailed(self.base_url)
        if status == 404:
            model = params.get("model")
            try:
                served = self.models()
            except ChatError:
                served = []
            missing = errors.ModelNotFound(str(model), served)
            return errors.BadRequest(404, detail) if model in served else missing
        if status >= 400 and _images(params):
            # A text-only model's server refuses an image part in its own words (vLLM: 400,
            # llama.cpp: 500 from its chat template), often as a stack trace's last line.
            return errors.NoVision(str(params.get("model")), _status_line(status, body))
        if status >= 500:
            return errors.ServerFailed(status, detail)
        if status in (400, 413) and any(h in detail.lower() for h in CONTEXT_HINTS):
            return errors.ContextTooLong(detail)
        return errors.BadRequest(status, detail)


def text_of(content: object) -> str:
    """A message's text: its content, or the text parts of a list of parts."""
    if isinstance(content, list):
        return "\n".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return str(content or "")


def _images(params: dict[str, Any]) -> bool:
    return any(
        isinstance(p, dict) and p.get("type") == "image_url"
        for m in params.get("messages") or ()
        if isinstance(m.get("content"), list)
        for p in m["content"]
    )


def _status_line(status: int, body: bytes) -> str:
    """`400: the error's last line`: a stack trace ends with what went wrong."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
        inner = data.get("error", data) if isinstance(data, dict) else data
        text = str(inner.get("message") if isinstance(inner, dict) else inner)
    except ValueError:
        text = errors.body_line(text)
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{status}: {errors.short(lines[-1], 120)}" if lines else str(status)


def prompt_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(text_of(m.get("content"))) for m in messages)


def _body_message(body: bytes) -> str:
    """The message of an error body: OpenAI-style JSON, or its first line of text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return errors.body_line(text)
    return sse.error_message(data) if isinstance(data, dict) else errors.short(text)
