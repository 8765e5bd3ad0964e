"""What an answer is made of, as the parser reads it: one small frozen value per kind.

The reader thread produces these (chat_cli.api.sse, from a stream or a whole JSON body) and hands
them to the main thread, which applies them to its answer (Answer.apply); being immutable, they
can cross threads without anything shared changing under either. Named tuples, not frozen
dataclasses: eight of those cost 5 ms of every start-up. (Being tuples, two events of different
kinds with equal fields compare equal: tell them apart by type.)
"""

from __future__ import annotations

from typing import NamedTuple


class Sent(NamedTuple):
    """The request left: the answer's times count from here."""

    at: float


class Text(NamedTuple):
    """Answer text. `tokens`: what it adds to the estimate used when the server reports no
    usage (one per chunk; a whole answer's estimate from its length)."""

    text: str
    at: float
    tokens: int = 1


class Reasoning(NamedTuple):
    text: str
    at: float
    tokens: int = 1


class CallDelta(NamedTuple):
    """A piece of a tool call: the id and the name come once, the arguments in pieces; calls
    are told apart by the stream's `index`, here `slot` (a tuple has an index method)."""

    slot: int
    id: str = ""
    name: str = ""
    arguments: str = ""


class UsageReport(NamedTuple):
    prompt_tokens: int
    completion_tokens: int


class Finish(NamedTuple):
    reason: str


class Done(NamedTuple):
    """The stream's `[DONE]`."""


class ServerError(NamedTuple):
    """An error event in the stream; the client raises it."""

    message: str


Event = Sent | Text | Reasoning | CallDelta | UsageReport | Finish | Done | ServerError
