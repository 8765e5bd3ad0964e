"""One chat session: the conversation, the sampling settings and one exchange at a time.

An exchange never loses words: whatever streamed before a Ctrl-C or an error stays in the
conversation, marked incomplete, and the conversation is autosaved after every change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from chat_cli import errors
from chat_cli.answer import Answer, has_surrogates
from chat_cli.client import ChatClient, Sampling
from chat_cli.conversation import Conversation, Message
from chat_cli.errors import ChatError
from chat_cli.render import Renderer
from chat_cli.streaming import StreamLoop

INTERRUPTED = "interrupted"
INCOMPLETE = "incomplete"
TRUNCATED = "cut short: the answer reached max_tokens"
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


class Session:
    def __init__(
        self,
        client: ChatClient,
        conversation: Conversation,
        sampling: Sampling,
        *,
        stream: bool = True,
        completions: bool = False,
    ) -> None:
        self.client = client
        self.conversation = conversation
        self.sampling = sampling
        self.stream = stream
        self.completions = completions
        self.stats = Stats()
        self.unsent: str | None = None  # a message whose request failed before any answer
        self.last_answer: Answer | None = None
        self.last_note: str | None = None  # INTERRUPTED, INCOMPLETE or None

    def set_sampling(self, **changes: Any) -> None:
        self.sampling = replace(self.sampling, **changes)
        self.conversation.model = self.sampling.model

    def ask(self, text: str, renderer: Renderer) -> Answer:
        """Send `text`, stream the answer into `renderer`. Raises ChatError after keeping
        what arrived; KeyboardInterrupt ends the answer early and is not re-raised."""
        if has_surrogates(text):
            # It could not be saved or sent: refuse it before it enters the history.
            raise ChatError("the message is not valid UTF-8 text; nothing was sent")
        self.conversation.messages.append(Message("user", text))
        self.conversation.autosave()
        messages = self.conversation.api_messages()
        answer = Answer()
        note: str | None = None
        failure: ChatError | None = None
        loop = StreamLoop(renderer)
        pieces = self.client.stream(
            messages,
            self.sampling,
            answer,
            stream=self.stream,
            completions=self.completions,
            cancel=loop.cancel,
        )
        saved_at = time.monotonic()

        def autosave() -> None:
            nonlocal saved_at
            if time.monotonic() - saved_at >= AUTOSAVE_EVERY_S:
                self._save_in_progress(answer)
                saved_at = time.monotonic()

        with loop.installed():
            try:
                loop.run(pieces, autosave)
            except KeyboardInterrupt:
                note = INTERRUPTED
            except errors.StreamFailed as err:
                failure = err
                note = INCOMPLETE
            except ChatError as err:
                failure = err
            if loop.abandoned:
                answer = answer.detached(sum(len(m["content"]) for m in messages))
            if loop.undrawn:
                # Keep what the screen shows: the end of the answer was left undrawn.
                answer.content = [answer.text[: len(answer.text) - loop.undrawn]]
            if note is None and failure is None and answer.finish_reason == "length":
                note = TRUNCATED
            self._keep(text, answer, note)
            said_something = bool(answer.text or answer.reasoning_text)
            renderer.finish(answer, note if said_something or note == INTERRUPTED else None)
        if failure is not None:
            self.stats.errors += 1
            if isinstance(failure, errors.StreamFailed) and not answer.text:
                raise errors.StreamFailed(failure.reason, partial=False) from failure
            raise failure
        return answer

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

    def _keep(self, text: str, answer: Answer, note: str | None) -> None:
        self.last_answer = answer
        self.last_note = note
        self.stats.add(answer)
        if answer.text:
            self.unsent = None
            self.conversation.messages.append(
                Message(
                    "assistant",
                    answer.text,
                    incomplete=note,
                    reasoning=answer.reasoning_text or None,
                )
            )
        else:
            # No answer text (an error, or Ctrl-C before the first word): take the question
            # out so the next one does not follow an unanswered one; /retry sends it again,
            # and it is in the input history.
            self.conversation.messages.pop()
            self.unsent = text
        self.conversation.autosave()

    def retry_text(self) -> str | None:
        if self.unsent is not None:
            text, self.unsent = self.unsent, None
            return text
        return self.conversation.pop_for_retry()
