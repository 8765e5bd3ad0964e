"""/trim and /compact: making a conversation fit the model's context again.

/trim drops the oldest exchanges (a question and all that answered it); the system prompt
stays. /compact asks the model to summarise the older exchanges, shows the summary as it
streams and replaces them with it only once the user says yes: a failed, interrupted or cut
short summary, or a no, leaves the conversation as it was. The summary joins the conversation
as what it is, the answer to a request for one, so the roles still alternate.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import IO, Any, Protocol

from chat_cli.conversation import Conversation, Message
from chat_cli.errors import ChatError
from chat_cli.render.plain import WARN_SHARE, PlainRenderer, percent
from chat_cli.session import TRUNCATED, Session

COMPACT_REQUEST = (
    "Summarise our conversation so far, for you to go on from later: the facts, decisions, "
    "names, numbers, code and open questions that matter, briefly."
)
# When max_tokens is the server's default: this, or a quarter of the context if less.
SUMMARY_MAX_TOKENS = 1024
# /trim without N drops exchanges until the next request would take at most this share,
# so that the few questions after it fit too.
TRIM_TARGET = WARN_SHARE


class Context(Protocol):
    """What the handlers need of chat_cli.commands.Commands."""

    session: Session
    out: IO[str]

    def say(self, text: str) -> None: ...


def exchanges(messages: list[Message]) -> list[list[Message]]:
    """The messages, one list for each question and everything that answered it."""
    groups: list[list[Message]] = []
    for message in messages:
        if message.role == "user" or not groups:
            groups.append([message])
        else:
            groups[-1].append(message)
    return groups


def _count(arg: str, usage: str) -> int | None:
    if not arg:
        return None
    if not arg.isdigit() or int(arg) < 1:
        raise ChatError(usage)
    return int(arg)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _now_takes(session: Session) -> str:
    """`the conversation now takes about ...`, or "" when the context is unknown."""
    window = session.window
    limit = window.limit if window is not None else None
    if window is None or limit is None:
        return ""
    messages = session.conversation.api_messages()
    if session.unsent is not None:
        messages.append({"role": "user", "content": session.unsent})
    used = window.used(messages)
    pending = " with the message not sent" if session.unsent is not None else ""
    share = percent(used / limit)
    return f"; the conversation{pending} now takes about {used:,} of {limit:,} tokens ({share})"


def _retry_hint(session: Session) -> str:
    return " /retry sends the message that did not fit." if session.unsent is not None else ""


def trim(commands: Context, arg: str) -> None:
    session = commands.session
    conversation = session.conversation
    groups = exchanges(conversation.messages)
    count = _count(arg, "usage: /trim [N] (drop the N oldest exchanges; alone: enough to fit)")
    if not groups:
        raise ChatError("nothing to trim: the conversation has no messages")
    if count is None:
        count = _enough(session, groups)
        if count == 0:
            commands.say(f"Nothing to trim{_now_takes(session)}.")
            return
    count = min(count, len(groups))
    dropped = sum(len(group) for group in groups[:count])
    del conversation.messages[:dropped]
    conversation.autosave()
    what = "the oldest exchange" if count == 1 else f"the {count} oldest exchanges"
    commands.say(
        f"Dropped {what} ({_plural(dropped, 'message')})"
        f"{_now_takes(session)}.{_retry_hint(session)}"
    )


def _enough(session: Session, groups: list[list[Message]]) -> int:
    """How many of the oldest exchanges to drop so that the next request takes at most
    TRIM_TARGET of the context."""
    window = session.window
    limit = window.limit if window is not None else None
    if window is None or limit is None:
        raise ChatError(
            "the model's context length is unknown (the server does not report it): "
            "/trim N drops the N oldest exchanges, --context-length N sets it"
        )
    pending = [] if session.unsent is None else [session.unsent]
    max_tokens = session.sampling.max_tokens
    target = limit * TRIM_TARGET
    everything = len(groups)

    def request(count: int) -> list[dict[str, Any]]:
        kept = [m for group in groups[count:] for m in group] + pending
        return Conversation(system=session.conversation.system, messages=kept).api_messages()

    # The estimate runs high, so the count it finds is enough; the server's tokenizer may
    # find that fewer are, in a few requests.
    room = window.room(max_tokens)
    high = next(
        (c for c in range(everything + 1) if window.used(request(c)) + room <= target),
        everything + 1,
    )
    low = 0
    while low < high:
        middle = (low + high) // 2
        if window.needed(request(middle), max_tokens, target) <= target:
            high = middle
        else:
            low = middle + 1
    if high <= everything:
        return high
    needed = window.needed(request(everything), max_tokens, limit)
    if needed > limit and pending:
        raise ChatError(
            f"the message that was not sent does not fit by itself (about {needed:,} tokens "
            f"with {room:,} for the answer; the context holds {limit:,}): shorten it"
        )
    return everything


def compact(commands: Context, arg: str) -> None:
    session = commands.session
    conversation = session.conversation
    keep = _count(arg, "usage: /compact [N] (summarise all but the last N exchanges; 1 alone)")
    keep = 1 if keep is None else keep
    groups = exchanges(conversation.messages)
    if len(groups) <= keep:
        last = "the last exchange stays" if keep == 1 else f"the last {keep} exchanges stay"
        raise ChatError(
            f"nothing to compact: the conversation has {_plural(len(groups), 'exchange')}, "
            f"and {last} as they are"
        )
    older = [m for group in groups[:-keep] for m in group]
    summary = _summarise(commands, older, len(groups) - keep)
    older_ones = "the older exchange" if len(groups) - keep == 1 else "the older exchanges"
    if not _confirm(commands.out, f"Replace {older_ones} with this summary?"):
        commands.say("Nothing replaced.")
        return
    kept = conversation.messages[len(older) :]
    conversation.messages[:] = [Message("user", COMPACT_REQUEST), Message("assistant", summary)]
    conversation.messages += kept
    conversation.autosave()
    commands.say(
        f"Replaced {_plural(len(older), 'message')} with the summary"
        f"{_now_takes(session)}.{_retry_hint(session)}"
    )


def _summarise(commands: Context, older: list[Message], count: int) -> str:
    """The model's summary of `older`, streamed to the screen; ChatError when there is none
    to use."""
    session = commands.session
    window = session.window
    limit = window.limit if window is not None else None
    # A summary cut short by max_tokens is still one: the user sees it and decides.
    max_tokens = session.sampling.max_tokens or min(SUMMARY_MAX_TOKENS, (limit or 4096) // 4)
    helper = Session(
        session.client,
        Conversation(system=session.conversation.system, messages=list(older)),
        replace(session.sampling, max_tokens=max_tokens),
        stream=session.stream,
        completions=session.completions,
    )
    if window is not None and limit is not None:
        request = [*helper.conversation.api_messages(), Message("user", COMPACT_REQUEST).to_api()]
        short = window.shortfall(request, max_tokens)
        if short is not None:
            raise ChatError(
                f"the {_plural(count, 'older exchange')} are too long to summarise in one "
                f"request (about {short.needed:,} tokens; the context holds {limit:,}): "
                "/trim N drops the oldest first"
            )
    commands.say(f"Summary of the {_plural(count, 'older exchange')} (Ctrl-C stops it):")
    out = commands.out
    try:
        answer = helper.ask(COMPACT_REQUEST, PlainRenderer(out, footer=False, styled=False))
    except ChatError as err:
        raise ChatError(f"no summary: {err.message}; nothing was replaced") from err
    note = helper.last_note
    if (note is not None and note != TRUNCATED) or not answer.text.strip():
        raise ChatError(f"no summary ({note or 'it was empty'}); nothing was replaced")
    return answer.text


def _confirm(out: IO[str], question: str) -> bool:
    """y and Enter says yes; anything else, or Ctrl-D, no (Ctrl-C cancels the command)."""
    out.write(f"{question} [y/N] ")
    out.flush()
    return _read_line(sys.stdin).strip().lower() in ("y", "yes")


def _read_line(stdin: IO[str]) -> str:
    """A line typed at the terminal, echoed and editable whatever mode the REPL left it in;
    keys typed before the question (during the summary) answer nothing and are dropped."""
    try:
        import termios  # noqa: PLC0415 (POSIX only)
    except ImportError:
        return stdin.readline()
    try:
        fd = stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):
        return stdin.readline()  # not a terminal
    line_mode = list(saved)
    line_mode[0] |= termios.ICRNL
    line_mode[3] |= termios.ECHO | termios.ICANON | termios.ISIG
    try:
        termios.tcsetattr(fd, termios.TCSANOW, line_mode)
        termios.tcflush(fd, termios.TCIFLUSH)
        return os.read(fd, 4096).decode("utf-8", "replace")
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
