"""Showing an answer as it streams.

MarkdownRenderer prints each finished markdown block once, to the scrollback, and keeps only
the unfinished tail in a small live region that is redrawn in place (aider's mdstream idea,
without its full re-render). Block boundaries are found by scanning each new line once, so the
cost grows linearly with the answer; tail redraws are throttled and cropped to the screen.

The live region is remembered as the cells of each line it printed, not as a count of rows:
terminals that reflow on resize (xterm.js, tmux, VTE, kitty...) re-wrap those lines to the new
width, so the rows to erase are worked out at the width the terminal has when it is erased.
"""

from __future__ import annotations

import re
import time
from typing import IO, TYPE_CHECKING, Protocol

from rich.cells import cell_len

from chat_cli.answer import Answer

if TYPE_CHECKING:
    from rich.console import Console

# Synchronized output (DEC 2026): terminals that lack it (and tmux < 3.4) ignore it.
SYNC_START = "\x1b[?2026h"
SYNC_END = "\x1b[?2026l"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
DIM = "\x1b[2m"
YELLOW = "\x1b[33m"
RESET = "\x1b[0m"

# Rich pads lines to the width with plain spaces, which terminals keep as text: after the
# terminal narrows, each padded line would re-wrap to two rows, one of them blank. Styled
# padding (code block backgrounds) is kept.
_PADDING = re.compile(r" +$", re.MULTILINE)
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\))")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^#{1,6}(\s|$)")
CODE_THEME = "monokai"


def footer_text(answer: Answer) -> str:
    parts = []
    if answer.ttft is not None:
        parts.append(f"TTFT {answer.ttft:.2f} s")
    rate = answer.tokens_per_s
    if rate is not None:
        parts.append(f"{rate:.1f} tok/s")
    if answer.usage is not None:
        approx = "~" if answer.usage.estimated else ""
        parts.append(
            f"{approx}{answer.usage.prompt_tokens} prompt + "
            f"{approx}{answer.usage.completion_tokens} completion tokens"
        )
    parts.append(f"{answer.elapsed:.1f} s")
    return " · ".join(parts)


def reasoning_summary(reasoning: str) -> str:
    return f"▸ reasoning: {len(reasoning.split())} words (/reasoning shows it)"


class Renderer(Protocol):
    live: bool  # redraws a live region in place: nothing else may write to the terminal

    def begin(self) -> None: ...
    def reasoning(self, text: str) -> None: ...
    def content(self, text: str) -> None: ...
    def finish(self, answer: Answer, note: str | None) -> None: ...

    def waiting(self) -> float | None:
        """Seconds until text received but not shown yet is due on screen; None: none waits."""

    def tick(self) -> None:
        """Show what `waiting` announced, once it falls due (called between pieces)."""

    def resized(self) -> None:
        """The terminal changed size: redraw the live part for the new size."""


class PlainRenderer:
    """Raw deltas: for pipes, --plain and --json. Reasoning never reaches `out`."""

    def __init__(self, out: IO[str], *, footer: bool, styled: bool) -> None:
        self.out = out
        self.footer = footer
        self.styled = styled
        self.live = False
        self._ends_with_newline = True

    def begin(self) -> None:
        pass

    def reasoning(self, text: str) -> None:
        pass

    def waiting(self) -> float | None:
        return None

    def tick(self) -> None:
        pass

    def resized(self) -> None:
        pass

    def content(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        self._ends_with_newline = text.endswith("\n")

    def finish(self, answer: Answer, note: str | None) -> None:
        lines = []
        if note:
            lines.append(self._style(f"[{note}]", YELLOW))
        if self.footer and answer.first_token_at is not None:
            lines.append(self._style(footer_text(answer), DIM))
        text = "" if self._ends_with_newline else "\n"
        if lines:
            text += "\n".join(lines) + "\n"
        self.out.write(text)
        self.out.flush()

    def _style(self, text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if self.styled else text


class MarkdownRenderer:
    def __init__(
        self,
        console: Console,
        *,
        live: bool | None = None,
        show_reasoning: bool = True,
        refresh_s: float = 0.08,
        footer: bool = True,
    ) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.show_reasoning = show_reasoning
        self.footer = footer
        self.refresh_s = refresh_s
        self.pending = ""  # markdown not yet printed to the scrollback
        self._scan = 0  # start of the first line of `pending` not scanned yet
        self._fence: tuple[str, int] | None = None  # open code fence: (char, length)
        self._candidate: int | None = None  # a blank-line boundary awaiting the next line
        self._blocks = 0
        self._ready: list[str] = []  # finished markdown not printed yet
        self._prefix = ""  # rendered text to print before the ready blocks
        self._reasoning: list[str] = []
        self._reasoning_done = False
        self._live: list[int] = []  # cells in each line of the live region, as printed
        self._printed = 0  # lines printed for good by this answer, above the live region
        self._active = False  # between begin() and finish(): the live region is ours
        self._dirty = False  # received text that the screen does not show yet
        self._last_draw = 0.0
        self._interval = refresh_s
        self._cursor_hidden = False

    # -- stream input ------------------------------------------------------------------
    def begin(self) -> None:
        """Show that the question left, before the first token (a CPU model takes seconds)."""
        if self.live:
            self._active = True
            self._emit()

    def reasoning(self, text: str) -> None:
        self._reasoning.append(text)
        if self.live:
            if self._due():
                self._emit()
            else:
                self._dirty = True

    def content(self, text: str) -> None:
        self._prefix += self._close_reasoning()
        self.pending += text
        cut = self._find_cut()
        if cut:
            self._ready.append(self.pending[:cut])
            self.pending = self.pending[cut:]
            self._scan -= cut
            self._candidate = None
        if self.live:
            # Finished blocks wait for the next redraw, so a fast stream renders them in
            # batches: fewer, larger markdown renders, same output.
            if self._due():
                self._emit()
            else:
                self._dirty = True
        elif self._ready or self._prefix:
            self._emit()

    def waiting(self) -> float | None:
        if not (self._dirty and self._active):
            return None
        return max(0.0, self._last_draw + self._interval - time.monotonic())

    def tick(self) -> None:
        if self._dirty and self._active:
            self._emit()

    def resized(self) -> None:
        if self._active:
            self._emit()

    def finish(self, answer: Answer, note: str | None) -> None:
        self._prefix += self._close_reasoning()
        self._ready.append(self.pending)
        self.pending = ""
        suffix = ""
        if note:
            suffix += self._styled(f"[{note}]", "yellow")
        if self.footer and answer.first_token_at is not None:
            suffix += self._styled(footer_text(answer), "dim")
        self._emit(suffix, tail=False)
        self._active = False
        if self._cursor_hidden:
            self.console.file.write(SHOW_CURSOR)
            self.console.file.flush()
            self._cursor_hidden = False

    # -- block boundaries ------------------------------------------------------------
    def _find_cut(self) -> int:
        """Scan complete new lines; return the end of the text that is finished (0: none)."""
        cut = 0
        pending = self.pending
        while True:
            newline = pending.find("\n", self._scan)
            if newline < 0:
                # The next line has begun without indentation: the block before is done.
                partial = pending[self._scan : self._scan + 1]
                if self._candidate is not None and partial and not partial.isspace():
                    cut = self._candidate
                    self._candidate = None
                return cut
            start, line = self._scan, pending[self._scan : newline]
            self._scan = newline + 1
            if self._fence is not None:
                char, length = self._fence
                stripped = line.strip()
                if stripped.startswith(char * length) and not stripped.strip(char):
                    self._fence = None
                    cut = self._scan  # a closed code block is finished
                continue
            fence = _FENCE.match(line)
            if fence:
                marker = fence.group(1)
                self._fence = (marker[0], len(marker))
                if not line.startswith((" ", "\t")):
                    cut = start  # a fence ends the paragraph before it
                self._candidate = None
                continue
            if not line.strip():
                if start > cut and self._candidate is None:
                    self._candidate = self._scan
                continue
            if not line.startswith((" ", "\t")):
                # Text after a blank line that is not indented: the block before it is done
                # (indented text could still belong to a list item above).
                if self._candidate is not None:
                    cut = self._candidate
                if _HEADING.match(line):
                    cut = self._scan
            self._candidate = None

    # -- output ------------------------------------------------------------------------
    def _block(self, markdown: str) -> str:
        if not markdown.strip():
            return ""
        text = _PADDING.sub("", self._render_markdown(markdown))
        separator = "\n" if self._blocks else ""
        self._blocks += 1
        return separator + text

    def _render_markdown(self, markdown: str) -> str:
        from rich.markdown import Markdown  # noqa: PLC0415 (slow import, warmed up in the REPL)

        with self.console.capture() as capture:
            self.console.print(Markdown(markdown, code_theme=CODE_THEME))
        return capture.get()

    def _styled(self, text: str, style: str) -> str:
        with self.console.capture() as capture:
            self.console.print(text, style=style, markup=False, highlight=False)
        return capture.get()

    def _close_reasoning(self) -> str:
        if self._reasoning_done or not self._reasoning:
            return ""
        self._reasoning_done = True
        if not self.show_reasoning:
            return ""
        return self._styled(reasoning_summary("".join(self._reasoning)), "dim")

    def _due(self) -> bool:
        return time.monotonic() - self._last_draw >= self._interval

    def _emit(self, suffix: str = "", *, tail: bool = True) -> None:
        """Print the finished blocks once above the live region, then redraw the tail."""
        committed = self._prefix + self._block("".join(self._ready)) + suffix
        self._prefix = ""
        self._ready = []
        if not self.live:
            if committed:
                self.console.file.write(committed)
                self.console.file.flush()
            return
        started = time.monotonic()
        parts = [SYNC_START]
        if not self._cursor_hidden and tail:
            parts.append(HIDE_CURSOR)
            self._cursor_hidden = True
        rows = self._live_rows()
        if rows:
            parts.append(f"\x1b[{rows}A")
        parts.append("\r\x1b[J")
        parts.append(committed)
        self._printed += committed.count("\n")
        tail_text = _PADDING.sub("", self._render_tail()) if tail else ""
        parts.append(tail_text)
        parts.append(SYNC_END)
        self._live = [cell_len(_ESCAPE.sub("", line)) for line in tail_text.splitlines()]
        self.console.file.write("".join(parts))
        self.console.file.flush()
        self._dirty = False
        self._last_draw = time.monotonic()
        # Back off when redraws get expensive, so a huge tail cannot eat the stream.
        self._interval = min(1.0, max(self.refresh_s, 4 * (self._last_draw - started)))

    def _live_rows(self) -> int:
        """Rows the live region takes now: its lines re-wrapped to the terminal's width."""
        width = max(1, self.console.width)
        return sum((cells - 1) // width + 1 if cells else 1 for cells in self._live)

    def _render_tail(self) -> str:
        rendered = ""
        if self._reasoning and not self._reasoning_done:
            if self.show_reasoning:
                thought = " ".join("".join(self._reasoning)[-600:].split()[-60:])
                rendered += self._styled("thinking… " + thought, "dim italic")
            else:
                words = len("".join(self._reasoning).split())
                rendered += self._styled(f"thinking… ({words} words)", "dim italic")
        if self.pending.strip():
            rendered += ("\n" if self._blocks else "") + self._render_markdown(self.pending)
        elif not rendered and not self._blocks:
            rendered = self._styled("…", "dim")
        lines = rendered.splitlines(keepends=True)
        # The live region must stay where the cursor can reach it to erase it, also after the
        # terminal narrows to half its width and re-wraps it to twice the rows. tmux (and
        # xterm.js with scrollback) keep the cursor's screen row on a resize and push the rows
        # above it into the scrollback, so the region gets no more lines than are known to be
        # above it: the lines this answer printed plus the question's (3 at least: the REPL's
        # banner and prompt are above a first answer); and half the screen at most.
        room = max(1, min((self.console.height - 2) // 2, max(3, 1 + self._printed)))
        if len(lines) > room:
            lines = lines[-room:]
        return "".join(lines)


def make_renderer(
    console: Console, out: IO[str], *, markdown: bool, show_reasoning: bool, footer: bool
) -> Renderer:
    if markdown:
        return MarkdownRenderer(console, show_reasoning=show_reasoning, footer=footer)
    return PlainRenderer(out, footer=footer, styled=out.isatty())
