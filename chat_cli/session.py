"""One chat session: the conversation, the sampling settings and one exchange at a time.

An exchange never loses words: whatever streamed before a Ctrl-C or an error stays in the
conversation, marked incomplete, and the conversation is autosaved after every change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from chat_cli import errors
from chat_cli.api.answer import Answer, ToolCall, has_surrogates
from chat_cli.api.client import ChatClient, Sampling, prompt_chars
from chat_cli.attach import Attachment
from chat_cli.conversation import Conversation, Message
from chat_cli.errors import ChatError
from chat_cli.render.plain import Renderer
from chat_cli.streaming import StreamLoop

if TYPE_CHECKING:
    from chat_cli.context_window import ContextWindow
    from chat_cli.tools.loop import ToolView
    from chat_cli.tools.toolbox import Toolbox

INTERRUPTED = "interrupted"
INCOMPLETE = "incomplete"
TRUNCATED = "cut short: the answer reached max_tokens"
ROUND_LIMIT = "the limit of tool rounds was reached"
IN_PROGRESS = "in progress"  # only ever seen in an autosave of a process that was killed
AUTOSAVE_EVERY_S = 1.0


@dataclass
class Stats:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    generation_s: float = 0.0
    errors: int = 0

    def add(self, answer: Answer) -> None:
        self.requests += 1
        if answer.usage is not None:
            self.prompt_tokens += answer.usage.prompt_tokens
            self.completion_tokens += answer.usage.completion_tokens
            self.estimated = self.estimated or answer.usage.estimated
        if answer.first_token_at is not None and answer.ended_at is not None:
            self.generation_s += answer.ended_at - answer.first_token_at


@dataclass(frozen=True)
class Exchanged:
    """One question asked: the conversation's messages from `start` on are what it added
    (none when it failed before an answer); `failure`, the error that ended it."""

    session: Session
    question: str
    start: int
    began: float  # wall clock
    failure: str | None


class Session:
    def __init__(
        self,
        client: ChatClient,
        conversation: Conversation,
        sampling: Sampling,
        *,
        stream: bool = True,
        completions: bool = False,
        tools: Toolbox | None = None,
        tool_view: ToolView | None = None,
        on_exchange: Callable[[Exchanged], None] | None = None,
        window: ContextWindow | None = None,
    ) -> None:
        """`tools`: None when no tools are configured; they need a `tool_view` to show them.
        `window`: refuses a request that would not fit the model's context."""
        if tools is not None and tool_view is None:
            raise ValueError("a session with tools needs a tool view")
        self.client = client
        self.conversation = conversation
        self.sampling = sampling
        self.stream = stream
        self.completions = completions
        self.stats = Stats()
        self.unsent: Message | None = None  # a question whose request failed before any answer
        self.last_answer: Answer | None = None
        self.last_note: str | None = None  # INTERRUPTED, INCOMPLETE, ROUND_LIMIT or None
        self.notice: str | None = None  # the last question's note that lost nothing
        self.tools = tools
        self.tool_view = tool_view
        self.answers: list[Answer] = []  # the last question's, one per round
        self.on_exchange = on_exchange  # called once per question, however it ended
        self.window = window
        # Recorded with each exchange; chat_cli.switching changes them.
        self.role: str | None = None
        self.server = "default"  # the name of the server `client` talks to

    def set_sampling(self, **changes: Any) -> None:
        self.sampling = replace(self.sampling, **changes)
        self.conversation.model = self.sampling.model
        if "model" in changes and self.window is not None:
            self.window.model_changed(self.sampling.model)

    def ask(
        self,
        text: str,
        renderer: Renderer,
        fresh: Callable[[], Renderer] | None = None,
        attachments: tuple[Attachment, ...] = (),
    ) -> Answer:
        """Send `text` (with `attachments`), stream the answer into `renderer`; while the
        answer calls tools, run them and ask again, each answer in a `fresh()` renderer. Raises
        ChatError after keeping what arrived; KeyboardInterrupt ends the answer early and is
        not re-raised."""
        if has_surrogates(text):
            # It could not be saved or sent: refuse it before it enters the history.
            raise ChatError("the message is not valid UTF-8 text; nothing was sent")
        if self.tools is not None and not self.completions:
            self.tools.check_choice()  # before the question joins the conversation
        start, began = len(self.conversation.messages), time.time()
        self.conversation.messages.append(Message("user", text, attachments=attachments))
        self.conversation.autosave()
        if self.tools is not None:
            self.tools.records.clear()
        self.answers = []
        self.notice = None
        failure: str | None = None
        try:
            return self._rounds(text, renderer, fresh)
        except ChatError as err:
            failure = err.message
            raise
        finally:
            if self.on_exchange is not None:
                self.on_exchange(Exchanged(self, text, start, began, failure))

    def _rounds(
        self, text: str, renderer: Renderer, fresh: Callable[[], Renderer] | None
    ) -> Answer:
        rounds = 0
        while True:
            answer = self._exchange(text if rounds == 0 else None, renderer, rounds == 0)
            calls = answer.tool_calls
            if not calls or self.tools is None or self.last_note is not None:
                return answer
            view = self.tool_view
            assert view is not None
            if rounds >= self.tools.max_rounds:
                # Every call keeps an answer, so the conversation goes on; no answer came.
                self._answer_calls(calls, f"not run: {ROUND_LIMIT}")
                self.last_note = ROUND_LIMIT
                raise errors.RoundLimit(rounds)
            from chat_cli.tools.loop import run_calls  # noqa: PLC0415 (start-up: only with tools)

            results, cancelled = run_calls(self.tools, calls, view)
            self.conversation.messages.extend(results)
            self.conversation.autosave()
            if cancelled:
                self.last_note = INTERRUPTED
                return answer
            rounds += 1
            renderer = fresh() if fresh is not None else renderer

    def _answer_calls(self, calls: list[ToolCall], text: str) -> None:
        self.conversation.messages.extend(
            Message("tool", f"error: {text}", tool_call_id=c.id, name=c.name) for c in calls
        )
        self.conversation.autosave()

    def _exchange(self, question: str | None, renderer: Renderer, first_round: bool) -> Answer:
        """One request and its answer; `question` is the user's text in the first round."""
        messages = self.conversation.api_messages()
        self._check_fits(messages, question)
        tools = None
        if self.tools is not None and not self.completions:
            tools = self.tools.request_params(first_round)
        answer = Answer()  # this thread's: the loop applies the reader's events to it
        note: str | None = None
        failure: ChatError | None = None
        loop = StreamLoop(renderer, answer)
        events = self.client.stream(
            messages,
            self.sampling,
            stream=self.stream,
            completions=self.completions,
            cancel=loop.cancel,
            tools=tools,
        )
        saved_at = time.monotonic()

        def autosave() -> None:
            nonlocal saved_at
            if time.monotonic() - saved_at >= AUTOSAVE_EVERY_S:
                self._save_in_progress(answer)
                saved_at = time.monotonic()

        with loop.installed():
            try:
                loop.run(events, autosave)
            except KeyboardInterrupt:
                note = INTERRUPTED
            except errors.StreamFailed as err:
                failure = err
                note = INCOMPLETE
            except errors.ContextTooLong as err:
                failure = err
                if self.window is not None:
                    self.window.learn(err.detail)
            except ChatError as err:
                failure = err
            # A reader abandoned after Ctrl-C may still run, but it writes to nothing of ours.
            # Without usage from the server, the window's estimate counts the template too.
            estimate = self.window.used(messages) if self.window is not None else None
            answer.end(prompt_chars(messages), loop.ended_at, prompt_tokens=estimate)
            # Keep what the screen shows: the end of the answer may have been left undrawn.
            answer.drop_text_tail(loop.undrawn)
            if note is None and failure is None and answer.finish_reason == "length":
                note = TRUNCATED
            kept_calls = self._keep(question, answer, note)
            forced_round = first_round and tools is not None and failure is None
            renderer.finish(answer, self._note_to_show(answer, note, forced_round))
        if failure is None and note == TRUNCATED and answer.calls and not answer.text:
            failure = errors.nothing_answered("length", [], bool(answer.reasoning_text))
        if failure is not None:
            self.stats.errors += 1
            if isinstance(failure, errors.StreamFailed) and not answer.text:
                raise errors.StreamFailed(failure.reason, partial=False) from failure
            raise failure
        if not kept_calls:
            answer.drop_calls()  # cut short: the calls are not whole, nothing is run
        return answer

    def _note_to_show(self, answer: Answer, note: str | None, forced_round: bool) -> str | None:
        """The note under an answer: why it ended early, and that a forced tool went uncalled."""
        said_something = bool(answer.text or answer.reasoning_text)
        shown = note if note is not None and (said_something or note == INTERRUPTED) else None
        if not forced_round or self.tools is None or note == INTERRUPTED:
            return shown
        self.notice = self.tools.ignored(len(answer.calls))
        return " · ".join(part for part in (shown, self.notice) if part) or None

    def _check_fits(self, messages: list[dict[str, Any]], question: str | None) -> None:
        """Refuse a request that would not fit, rather than have the server refuse it."""
        if self.window is None:
            return
        short = self.window.shortfall(messages, self.sampling.max_tokens)
        if short is None:
            return
        if question is not None:  # kept for /retry, as a message whose request failed
            self.unsent = self.conversation.messages.pop()
            self.conversation.autosave()
        raise errors.WontFit(short.needed, short.limit, short.room)

    def _save_in_progress(self, answer: Answer) -> None:
        """Autosave the answer so far, so a closed terminal or a kill loses at most a second."""
        if not answer.text:
            return
        messages = self.conversation.messages
        messages.append(Message("assistant", answer.text, incomplete=IN_PROGRESS))
        try:
            self.conversation.autosave()
        finally:
            messages.pop()

    def _keep(self, text: str | None, answer: Answer, note: str | None) -> bool:
        """Keep the answer; True when it holds calls to run (only a whole answer's)."""
        self.last_answer = answer
        self.answers.append(answer)
        self.last_note = note
        self.stats.add(answer)
        calls = answer.name_calls() if note is None and self.tools is not None else []
        if answer.text or calls:
            self.unsent = None
            self.conversation.messages.append(
                Message(
                    "assistant",
                    answer.text,
                    incomplete=note,
                    reasoning=answer.reasoning_text or None,
                    tool_calls=[c.to_api() for c in calls] or None,
                )
            )
        elif text is None:
            pass  # a later round: the question and the calls so far stay
        else:
            # No answer text (an error, or Ctrl-C before the first word): take the question
            # out so the next one does not follow an unanswered one; /retry sends it again,
            # and it is in the input history.
            self.unsent = self.conversation.messages.pop()
        self.conversation.autosave()
        if self.window is not None and (answer.text or calls):
            self.window.measured(self.conversation.api_messages(), answer)
        return bool(calls)

    def retry(self) -> Message | None:
        """The last question, to send again: unsent, or taken out with its answer."""
        if self.unsent is not None:
            question, self.unsent = self.unsent, None
            return question
        return self.conversation.pop_for_retry()
