"""Redraws between the pieces of an answer, on the main thread.

Redraws are throttled, so words that arrive just after one wait for the next: if the stream
then pauses, a one-shot SIGALRM timer shows them when the redraw falls due. SIGWINCH redraws
the live region at once for the new terminal size. Both handlers run in the main thread,
which owns the terminal, and never inside a drawing step: while one runs (the shield is up)
they leave the work to the end of that step, so there is no second writer and no polling.

SIGALRM is only taken when nobody holds it (pytest-timeout does, in-process tests); without
it, waiting text shows with the next piece or at the end of the answer, as before.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

from chat_cli.render import Renderer

RESIZE_DELAY_S = 0.01  # a resize seen mid-step is drawn this soon after, if no piece comes


class Shield(Protocol):
    """Holds signals back while a piece is drawn (session._Interrupts)."""

    shielded: bool

    def __enter__(self) -> None: ...
    def __exit__(self, *exc: object) -> None: ...


def _alarm_free() -> bool:
    return signal.getsignal(signal.SIGALRM) == signal.SIG_DFL and signal.getitimer(
        signal.ITIMER_REAL
    ) == (0.0, 0.0)


class Redraws:
    def __init__(self, renderer: Renderer, shield: Shield) -> None:
        self.renderer = renderer
        self.shield = shield
        self.timer = False  # SIGALRM is ours
        self.armed = False
        self._resized = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous_winch = signal.signal(signal.SIGWINCH, self._on_resize)
        previous_alarm = None
        if _alarm_free():
            previous_alarm = signal.signal(signal.SIGALRM, self._on_alarm)
            self.timer = True
        try:
            yield
        finally:
            if self.timer:
                # Disarm before giving the handler back: SIGALRM's default kills the process.
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous_alarm)
                self.timer = self.armed = False
            signal.signal(signal.SIGWINCH, previous_winch)

    def after_piece(self) -> None:
        """End of a drawing step (shield up): catch up on a resize, arm the timer if needed."""
        if self._resized:
            self._resized = False
            self.renderer.resized()
        if self.timer and not self.armed:
            delay = self.renderer.waiting()
            if delay is not None:
                self._arm(delay)

    def _arm(self, delay: float) -> None:
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, max(delay, 0.001))

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        self.armed = False
        if self.shield.shielded:
            return  # the step under way ends with after_piece, which re-arms if need be
        with self.shield:
            if self._resized:
                self._resized = False
                self.renderer.resized()
            else:
                self.renderer.tick()

    def _on_resize(self, signum: int, frame: FrameType | None) -> None:
        if self.shield.shielded:
            self._resized = True
            if self.timer:
                self._arm(RESIZE_DELAY_S)
            return
        with self.shield:
            self._resized = False
            self.renderer.resized()
