"""What an answer is made of, as the parser reads it: one small frozen value per kind.

The reader thread produces these (chat_cli.api.sse, from a stream or a whole JSON body) and hands
them to the main thread, which applies them to its answer (Answer.apply); being frozen, they
can cross threads without anything shared changing under either.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sent:
    """The request left: the answer's times count from here."""

    at: float


@dataclass(frozen=True, slots=True)
class Text:
    """Answer text. `tokens`: what it adds to the estimate used when the server reports no
    usage (one per chunk; a whole answer's estimate from its length)."""

    text: str
    at: float
    tokens: int = 1


@dataclass(frozen=True, slots=True)
class Reasoning:
    text: str
    at: float
    tokens: int = 1


@dataclass(frozen=True, slots=True)
class CallDelta:
    """A piece of a tool call: the id and the name come once, the arguments in pieces; calls
    are told apart by `index`."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class UsageReport:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str


@dataclass(frozen=True, slots=True)
class Done:
    """The stream's `[DONE]`."""


@dataclass(frozen=True, slots=True)
class ServerError:
    """An error event in the stream; the client raises it."""

    message: str


Event = Sent | Text | Reasoning | CallDelta | UsageReport | Finish | Done | ServerError
