"""Redraws between the pieces of an answer, on the main thread.

Redraws are throttled, so words that arrive just after one wait for the next: if the stream
then pauses, a one-shot SIGALRM timer shows them when the redraw falls due. SIGWINCH redraws
the live region at once for the new terminal size. Both handlers run in the main thread,
which owns the terminal, and never inside a drawing step: while one runs (the shield is up)
they leave the work to the end of that step, so there is no second writer and no polling.

SIGALRM is only taken when nobody holds it (pytest-timeout does, in-process tests); without
it, waiting text shows with the next piece or at the end of the answer, as before.

Keys typed during an answer are not echoed while a live region is drawn: the echo lands in
the live region, and an echoed Enter moves the cursor a row down under the renderer's feet.
The keys stay queued (the line discipline keeps them) for the next prompt.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import IO, Protocol

from chat_cli.render import Renderer

RESIZE_DELAY_S = 0.01  # a resize seen mid-step is drawn this soon after, if no piece comes


class Shield(Protocol):
    """Holds signals back while a piece is drawn (session._Interrupts)."""

    shielded: bool

    def __enter__(self) -> None: ...
    def __exit__(self, *exc: object) -> None: ...


@contextmanager
def echo_off(stream: IO[str]) -> Iterator[None]:
    import termios  # noqa: PLC0415 (POSIX only, like the redraws)

    try:
        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):
        yield  # not a terminal (a pipe, a closed or captured stdin)
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _alarm_free() -> bool:
    return signal.getsignal(signal.SIGALRM) == signal.SIG_DFL and signal.getitimer(
        signal.ITIMER_REAL
    ) == (0.0, 0.0)


class Redraws:
    def __init__(self, renderer: Renderer, shield: Shield, stdin: IO[str] | None = None) -> None:
        self.renderer = renderer
        self.shield = shield
        self.stdin = sys.stdin if stdin is None else stdin
        self.timer = False  # SIGALRM is ours
        self.armed = False
        self._resized = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        if not self.renderer.live or sys.platform == "win32":
            yield
            return
        with ExitStack() as stack:
            stack.enter_context(echo_off(self.stdin))
            if threading.current_thread() is threading.main_thread():
                stack.enter_context(self._signals())
            yield

    @contextmanager
    def _signals(self) -> Iterator[None]:
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
