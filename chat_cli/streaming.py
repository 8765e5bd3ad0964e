"""One answer's stream loop, with the main thread as the only caller into the renderer.

A reader thread runs the request and puts its events on a queue: frozen values, so nothing
the two threads share changes; the main thread alone applies them to its answer. Signal
handlers only set a flag and put a marker there to wake the loop (SimpleQueue.put is safe in
a signal handler).
The main thread waits on the queue with the renderer's next redraw as timeout: words that
arrive just before a pause show when their redraw falls due, a resize redraws the live region
at once, and Ctrl-C is acted on between two drawing steps, never inside an escape sequence.

Ctrl-C hangs up the response's socket, which wakes the reader's blocked read; a reader with
no socket yet (waiting for the server's first byte) is left to end by itself, as a daemon.

Keys typed during an answer are not echoed while a live region is drawn: the echo lands in
the live region, and an echoed Enter moves the cursor a row down under the renderer's feet.
The keys stay queued (the line discipline keeps them) for the next prompt.
"""

from __future__ import annotations

import enum
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import IO

from chat_cli.api.answer import Answer
from chat_cli.api.events import Event, Reasoning, Text
from chat_cli.api.transport import Cancel
from chat_cli.render.plain import Renderer
from chat_cli.tty import typeahead_quiet

HANG_UP_GRACE_S = 2.0  # a reader woken by the hang-up only unwinds: it ends well within this
# Text is drawn in slices of this many characters, with a look for Ctrl-C between two: one
# piece can be a megabyte, and drawing it whole would hold the Ctrl-C up for seconds.
SLICE = 4096


class Marker(enum.Enum):
    RESIZED = "resized"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class End:
    """The reader's last item: the request ended at `at`, with `error` if it failed."""

    at: float
    error: BaseException | None = None


Item = Event | Marker | End


@contextmanager
def _handler(signum: int, handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


class StreamLoop:
    def __init__(self, renderer: Renderer, answer: Answer, stdin: IO[str] | None = None) -> None:
        self.renderer = renderer
        self.answer = answer  # written here, in the main thread, from the reader's events
        self.ended_at: float | None = None  # when the reader saw the request end
        self.stdin = sys.stdin if stdin is None else stdin
        self.cancel = Cancel()
        self.abandoned = False  # the reader was left running after Ctrl-C (see the docstring)
        self.undrawn = 0  # characters at the end of the answer left undrawn after a Ctrl-C
        self._drawn_late = 0  # characters drawn after the Ctrl-C
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._interrupted = False
        self._resized = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Signal handlers (and no echo) for the answer, its bookkeeping included: a second
        Ctrl-C must not cut that short."""
        posix = sys.platform != "win32"
        with ExitStack() as stack:
            if self.renderer.live and posix:
                stack.enter_context(typeahead_quiet(self.stdin))
            if threading.current_thread() is threading.main_thread():
                stack.enter_context(_handler(signal.SIGINT, self._on_interrupt))
                if self.renderer.live and posix:
                    stack.enter_context(_handler(signal.SIGWINCH, self._on_resize))
            yield

    def run(self, events: Iterator[Event], on_event: Callable[[], None]) -> None:
        """Apply and draw `events` as a reader thread pulls them; `on_event` after each. Raises
        what the reader raised, or KeyboardInterrupt (Ctrl-C) once the reader is stopped and
        what it read is drawn."""
        reader = threading.Thread(
            target=self._read, args=(events,), name="chat-reader", daemon=True
        )
        reader.start()
        try:
            self.renderer.begin()
            self._drive(on_event)
        except BaseException:
            self._stop(reader)
            raise
        reader.join()  # End was its last act

    def _read(self, events: Iterator[Event]) -> None:
        if sys.platform != "win32":
            # Signals go to the main thread, whose wait on the queue they wake.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGWINCH})
        try:
            for event in events:
                self._queue.put(event)
        except BaseException as err:  # the main thread raises it
            self._queue.put(End(time.monotonic(), err))
        else:
            self._queue.put(End(time.monotonic()))

    def _drive(self, on_event: Callable[[], None]) -> None:
        renderer = self.renderer
        while True:
            item = self._next()
            if self._interrupted:
                raise KeyboardInterrupt
            if self._resized:
                self._resized = False
                renderer.resized()
            if isinstance(item, End):
                self.ended_at = item.at
                if item.error is not None:
                    raise item.error
                return
            if item is None:
                renderer.tick()
            elif not isinstance(item, Marker):
                self._take(item)
                on_event()

    def _next(self) -> Item | None:
        """The next item, or None when the renderer's redraw falls due first."""
        delay = self.renderer.waiting()
        try:
            return self._queue.get(timeout=None if delay is None else max(0.0, delay))
        except queue.Empty:
            return None

    def _take(self, event: Event) -> None:
        """Apply the event to the answer and draw what it shows."""
        self.answer.apply(event)
        if isinstance(event, Reasoning):
            self.renderer.reasoning(event.text)
        elif isinstance(event, Text):
            self._draw(event.text)

    def _draw(self, text: str) -> None:
        while text:
            # After a Ctrl-C, what was read is drawn up to one slice more, and the rest is
            # left out (of the screen and the conversation alike).
            if self.undrawn or (self._interrupted and self._drawn_late >= SLICE):
                self.undrawn += len(text)
                return
            part, text = text[:SLICE], text[SLICE:]
            if self._interrupted:
                self._drawn_late += len(part)
            self.renderer.content(part)

    def _stop(self, reader: threading.Thread) -> None:
        """Stop the request; draw what it read before it stopped, so the screen shows what
        the conversation keeps."""
        woken = self.cancel.cancel()
        deadline = time.monotonic() + (HANG_UP_GRACE_S if woken else 0.0)
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.abandoned = True
                return
            if isinstance(item, End):
                self.ended_at = item.at
                reader.join()
                return
            if not isinstance(item, Marker):
                self._take(item)

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        self._interrupted = True
        self._queue.put(Marker.INTERRUPTED)

    def _on_resize(self, signum: int, frame: FrameType | None) -> None:
        if not self._resized:
            self._resized = True
            self._queue.put(Marker.RESIZED)
