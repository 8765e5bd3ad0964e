"""Domain errors. Each carries the one line a user sees; only the CLI edge prints them."""

from __future__ import annotations

import contextlib
import re
from http import HTTPStatus

EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it


class ChatError(Exception):
    """Base class: `str(err)` is the line the REPL shows, `err.one_shot()` the line a one-shot
    `chat QUESTION` shows: REPL commands (/retry, /clear) mean nothing there."""

    exit_code = 1

    def __init__(self, message: str, repl_hint: str = "", one_shot_hint: str = "") -> None:
        super().__init__(f"{message}; {repl_hint}" if repl_hint else message)
        self.message = message
        self.one_shot_hint = one_shot_hint

    def one_shot(self) -> str:
        return f"{self.message}; {self.one_shot_hint}" if self.one_shot_hint else self.message


class ConfigError(ChatError):
    exit_code = 2


class ServerUnreachable(ChatError):
    def __init__(self, url: str, reason: str, fallback: str | None = None) -> None:
        hint = (
            f"; fallback {fallback} is unreachable too"
            if fallback
            else "; start it with `mixvllm-serve up`, set MODEL_SERVER_URL, or pass --fallback-url"
        )
        super().__init__(f"cannot reach the model server at {url} ({reason}){hint}")
        self.url = url
        self.reason = reason


class WaitTimeout(ChatError):
    def __init__(self, url: str, seconds: float, last: str) -> None:
        super().__init__(f"model server at {url} not ready after {seconds:.0f} s (last: {last})")


class AuthFailed(ChatError):
    def __init__(self, url: str) -> None:
        super().__init__(
            f"the model server at {url} rejected the API key (401); set the server's key: "
            "`export VLLM_API_KEY=$(mixvllm-serve key)` (or OPENAI_API_KEY, or --api-key)"
        )


class ModelNotFound(ChatError):
    def __init__(self, model: str, served: list[str]) -> None:
        served_text = ", ".join(served) if served else "none"
        super().__init__(f"model {model!r} is not served here (404); served models: {served_text}")
        self.served = served


class NoModels(ChatError):
    def __init__(self, url: str) -> None:
        super().__init__(f"the model server at {url} serves no models (/v1/models is empty)")


FIT_HINT = "/trim drops the oldest turns, /compact summarises them; then /retry sends it"


class ContextTooLong(ChatError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the conversation no longer fits the model's context (400: {detail})",
            FIT_HINT,
            "shorten the input or lower --max-tokens",
        )
        self.detail = detail


class WontFit(ChatError):
    """Not sent: chat's own count says the server would refuse it."""

    def __init__(self, needed: int, limit: int, room: int) -> None:
        super().__init__(
            f"not sent: it would not fit the model's context (about {needed:,} tokens with "
            f"{room:,} for the answer; the context holds {limit:,})",
            FIT_HINT,
            "shorten the input or lower --max-tokens",
        )


class BadRequest(ChatError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"the model server refused the request ({_status(status, detail)})")


class NoVision(ChatError):
    """A request with an image refused: the model most likely takes no image input."""

    def __init__(self, model: str, said: str) -> None:
        super().__init__(
            f"the model server refused the image ({said}): {model} may not take images",
            "switch to a vision model (/model) or ask again without the image (/file -)",
            "use a vision model (--model) or leave the image out",
        )


class ServerFailed(ChatError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"the model server failed ({_status(status, detail)})", "try /retry")
        self.status = status
        self.detail = detail


class TimedOut(ChatError):
    """No answer by the deadline: nothing arrived, so nothing was kept."""

    def __init__(self, seconds: float, whole: bool) -> None:
        what = "finished the answer" if whole else "started to answer"
        super().__init__(f"the model server has not {what} after {seconds:g} s (--deadline)")


class BadResponse(ChatError):
    """A 200 answer that is not an answer: a proxy's page, a body of an unknown shape."""


class NothingAnswered(ChatError):
    """The request worked but brought no text: an empty answer, tool calls only, or a length
    limit reached before any text."""


class RoundLimit(ChatError):
    """The model still called tools after --max-tool-rounds rounds: there is no answer."""

    def __init__(self, rounds: int) -> None:
        super().__init__(
            f"stopped: the model still called tools after {rounds} round"
            f"{'s' if rounds != 1 else ''} (--max-tool-rounds); its last calls were not run"
        )


class StreamFailed(ChatError):
    """The answer stream broke after it started; what arrived (`partial`) is kept."""

    def __init__(self, reason: str, *, partial: bool = True) -> None:
        if partial:
            hints = ("the partial answer was kept (try /retry)", "the answer is incomplete")
        else:
            hints = ("no answer text arrived (try /retry)", "no answer text arrived")
        super().__init__(reason, *hints)
        self.reason = reason
        self.partial = partial


def error_event(detail: str) -> StreamFailed:
    return StreamFailed(f"the server reported an error mid-answer: {detail}")


def malformed_stream(detail: str) -> StreamFailed:
    return StreamFailed(f"the server sent a malformed stream line ({detail})")


def incomplete_stream(done: bool) -> StreamFailed:
    if done:
        return StreamFailed("the server ended the answer early ([DONE] without a finish reason)")
    return StreamFailed("the answer stream ended early (no finish reason and no [DONE])")


def connection_cut() -> StreamFailed:
    return StreamFailed("the connection to the model server was cut mid-answer")


def stalled(seconds: float) -> StreamFailed:
    return StreamFailed(f"the model server sent nothing for {seconds:g} s (stall timeout)")


def _status(status: int, detail: str) -> str:
    """`502 Bad Gateway: detail`: a bare number says little when a proxy answers."""
    text = str(status)
    if status >= 400:
        with contextlib.suppress(ValueError):  # a status Python has no name for
            text += f" {HTTPStatus(status).phrase}"
    if detail.lower() == text.lower():  # an HTML error page's title
        return text
    return f"{text}: {detail}" if detail else f"{text}, empty body"


_TAG = re.compile(r"<[^>]*>")


def body_line(body: str) -> str:
    """The first line of an error body that is not JSON, tags dropped (proxies answer in HTML)."""
    text = _TAG.sub("\n", body) if body.lstrip().startswith("<") else body
    return short(next((line for line in text.splitlines() if line.strip()), ""))


def not_an_event_stream(content_type: str, body: bytes) -> BadResponse:
    first = body.decode("utf-8", "replace").strip().split("\n", 1)[0]
    return BadResponse(
        f"the model server answered with {content_type or 'no content type'}, not an event "
        f"stream (first line: {short(first, 80) or 'empty'})"
    )


def nothing_answered(finish_reason: str | None, tools: list[str], reasoned: bool) -> ChatError:
    if tools:
        return NothingAnswered(
            f"the model asked to call a tool ({', '.join(tools)}); chat has no tools enabled, "
            "so there is no answer"
        )
    if finish_reason == "length":
        spent = "on reasoning " if reasoned else ""
        return NothingAnswered(
            f"the answer reached max_tokens {spent}before any text (finish_reason: length); "
            "raise --max-tokens"
        )
    if reasoned:
        return NothingAnswered("the model only reasoned and gave no answer text")
    return NothingAnswered(f"the model gave an empty answer (finish_reason: {finish_reason})")


def short(text: str, limit: int = 200) -> str:
    """One line, bounded: server messages can be long JSON blobs."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
