"""Showing an answer as it streams.

MarkdownRenderer prints each finished markdown block once, to the scrollback, and keeps only
the unfinished tail in a small live region that is redrawn in place (aider's mdstream idea,
without its full re-render). Block boundaries are found by scanning each new line once, so the
cost grows linearly with the answer; tail redraws are throttled and cropped to the screen.

The live region is remembered as the cells of each line it printed, not as a count of rows:
terminals that reflow on resize (xterm.js, tmux, VTE, kitty...) re-wrap those lines to the new
width, so the rows to erase are worked out at the width the terminal has when it is erased.
Its lines are cut to the width they are drawn for: a frame can reach a terminal that has
grown since chat read its size (a browser resizes itself before the PTY follows), and a
wider terminal would join soft-wrapped rows, so the erase would climb into the lines above.
"""

from __future__ import annotations

import re
import time
from typing import IO, TYPE_CHECKING

from rich.cells import cell_len, get_character_cell_size

from chat_cli.api.answer import Answer
from chat_cli.render.blocks import Blocks
from chat_cli.render.plain import (
    PlainRenderer,
    Renderer,
    answer_share,
    footer_text,
    reasoning_summary,
)
from mixvllm_common.terminal_text import visible

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult

# Synchronized output (DEC 2026): terminals that lack it (and tmux < 3.4) ignore it.
SYNC_START = "\x1b[?2026h"
SYNC_END = "\x1b[?2026l"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"

# Rich pads lines to the width with plain spaces, which terminals keep as text: after the
# terminal narrows, each padded line would re-wrap to two rows, one of them blank. Styled
# padding (code block backgrounds) is kept.
_PADDING = re.compile(r" +$", re.MULTILINE)
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\))")
_ESCAPES_KEPT = re.compile(f"({_ESCAPE.pattern})")
# A literal markup character may open a span that closes later and re-wraps the lines after
# it (`**bold` becomes bold), so those lines stay live a little longer.
_MARKUP = re.compile(r"[*_`~\[]")
KEEP = 2  # the newest wrapped lines of a block stay live: its last word may still grow
# Finished markdown waiting for a redraw is drawn at once past this size: one markdown render
# of it stays short enough not to hold a Ctrl-C up.
BATCH = 8192
CODE_THEME = "monokai"


class MarkdownRenderer:
    def __init__(
        self,
        console: Console,
        *,
        live: bool | None = None,
        show_reasoning: bool = True,
        refresh_s: float = 0.08,
        footer: bool = True,
        page_marks: bool = False,
        context_limit: int | None = None,
    ) -> None:
        self.console = console
        self.context_limit = context_limit
        self.page_marks = page_marks  # code blocks carry the browser page's copy markers
        self.live = console.is_terminal if live is None else live
        self.show_reasoning = show_reasoning
        self.footer = footer
        self.refresh_s = refresh_s
        self._splitter = Blocks()
        self._shown: list[str] = []  # the unfinished block's lines printed for good (plain)
        # The width those lines were laid out for: the block keeps it to its end, so a resize
        # re-wraps its lines in the terminal, like any printed line, instead of re-laying them.
        self._pinned: int | None = None
        self._blocks = 0
        self._ready: list[str] = []  # finished markdown not printed yet
        self._ready_chars = 0
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
        self._reasoning.append(visible(text))
        if self.live:
            if self._due():
                self._emit()
            else:
                self._dirty = True

    @property
    def pending(self) -> str:
        """Markdown of the unfinished block."""
        return self._splitter.pending

    def content(self, text: str) -> None:
        self._prefix += self._close_reasoning()
        # Made visible before the markdown parser: only chat's own sequences (styles, the
        # page's copy markers around code blocks) reach the terminal, and a code block's
        # text, on screen and in its copy marker, shows what the model sent.
        done = self._splitter.feed(visible(text))
        if done:
            self._ready.append(done)
            self._ready_chars += len(done)
        if self.live:
            # Finished blocks wait for the next redraw, so a fast stream renders them in
            # batches: fewer, larger markdown renders, same output.
            if self._due() or self._ready_chars > BATCH:
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
        self._ready.append(self._splitter.rest())
        suffix = ""
        if note:
            suffix += self._styled(f"[{note}]", "yellow")
        if self.footer and answer.first_token_at is not None:
            suffix += self._footer(answer)
        self._emit(suffix, tail=False)
        self._active = False
        if self._cursor_hidden:
            self.console.file.write(SHOW_CURSOR)
            self.console.file.flush()
            self._cursor_hidden = False

    # -- output ------------------------------------------------------------------------
    def _block(self, markdown: str) -> str:
        if not markdown.strip():
            return ""
        text = _PADDING.sub("", self._render_markdown(markdown))
        separator = "\n" if self._blocks else ""
        self._blocks += 1
        return separator + text

    def _render_markdown(self, markdown: str, final: bool = True) -> str:
        """`final`: the markdown is finished (its code blocks' text can go to the page)."""
        from rich.markdown import Markdown  # noqa: PLC0415 (slow import, warmed up in the REPL)

        rendered: RenderableType
        if self.page_marks:
            from chat_cli.render.page_markdown import MarkedMarkdown  # noqa: PLC0415

            rendered = MarkedMarkdown(markdown, code_theme=CODE_THEME, final=final)
        else:
            rendered = Markdown(markdown, code_theme=CODE_THEME)
        if self._pinned is not None:
            rendered = _Pinned(rendered, self._pinned)
        with self.console.capture() as capture:
            self.console.print(rendered, crop=self._pinned is None)
        return capture.get()

    def _styled(self, text: str, style: str) -> str:
        with self.console.capture() as capture:
            self.console.print(text, style=style, markup=False, highlight=False)
        return capture.get()

    def _footer(self, answer: Answer) -> str:
        from rich.text import Text  # noqa: PLC0415 (loaded with rich.markdown already)

        line = Text(footer_text(answer), style="dim")
        share = answer_share(answer, self.context_limit)
        if share is not None:
            text, level = share
            line.append(" · ", style="dim")
            line.append(text, style={"warn": "yellow", "full": "red"}.get(level or "", "dim"))
        with self.console.capture() as capture:
            self.console.print(line, highlight=False)
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
        """Print what is final once above the live region, then redraw the live region."""
        committed = self._prefix + self._finished() + suffix
        self._prefix = ""
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
        final, live = self._tail() if tail else ("", [])
        committed += final
        parts.append(committed)
        self._printed += committed.count("\n")
        parts.extend(live)
        parts.append(SYNC_END)
        self._live = [cell_len(_ESCAPE.sub("", line).rstrip("\n")) for line in live]
        self.console.file.write("".join(parts))
        self.console.file.flush()
        self._dirty = False
        self._last_draw = time.monotonic()
        # Back off when redraws get expensive, so a huge tail cannot eat the stream.
        self._interval = min(1.0, max(self.refresh_s, 4 * (self._last_draw - started)))

    def _finished(self) -> str:
        """The blocks finished since the last draw, less the lines of the first one that
        were printed for good while it streamed."""
        if not self._ready:
            return ""
        ready, self._ready, self._ready_chars = self._ready, [], 0
        body = ""
        if self._shown:
            lines = _lines(self._block(ready.pop(0)))
            body = "".join(lines[self._agreed(lines) :])
            self._shown, self._pinned = [], None
        return body + self._block("".join(ready))

    def _live_rows(self) -> int:
        """Rows the live region takes now: its lines re-wrapped to the terminal's width."""
        width = max(1, self.console.width)
        return sum((cells - 1) // width + 1 if cells else 1 for cells in self._live)

    def _room(self) -> int:
        """The most lines the live region may have.

        It must stay where the cursor can reach it to erase it, also after the terminal
        narrows to half its width and re-wraps it to twice the rows. tmux (and xterm.js with
        scrollback) keep the cursor's screen row on a resize and push the rows above it into
        the scrollback, so the region gets no more lines than are known to be above it: the
        lines this answer printed plus the question's (3 at least: the REPL's banner and
        prompt are above a first answer); and half the screen at most.
        """
        return max(1, min((self.console.height - 2) // 2, max(3, 1 + self._printed)))

    def _tail(self) -> tuple[str, list[str]]:
        """The unfinished block's lines that became final (printed for good from now on, so
        the live region stays a few rows high and nothing is cropped away), and the live
        lines after them."""
        room, width = self._room(), max(1, self.console.width)
        if self._reasoning and not self._reasoning_done:
            return "", _rows(_lines(self._thinking()), width)[-room:]
        if not self.pending.strip():
            return "", [] if self._blocks else _lines(self._styled("…", "dim"))
        separator = "\n" if self._blocks else ""
        lines = _lines(separator + self._render_markdown(self.pending, final=False))
        lines = lines[self._agreed(lines) :]
        final = self._final(lines, room)
        self._shown += [_plain(line) for line in lines[:final]]
        if not self._shown:
            self._pinned = None
        elif self._pinned is None:
            self._pinned = self.console.width
        return "".join(lines[:final]), _rows(lines[final:], width)[-room:]

    def _final(self, lines: list[str], room: int) -> int:
        """How many of the unfinished block's new lines are final: all but the newest KEEP,
        and none from a literal markup character on, unless the live region would outgrow
        `room`. None of a table's (its columns widen with any row): it is cropped instead."""
        if self._splitter.table:
            return 0
        final = max(0, len(lines) - KEEP)
        if not self._splitter.code:
            final = next((i for i in range(final) if _MARKUP.search(_plain(lines[i]))), final)
        return max(final, len(lines) - room)

    def _agreed(self, lines: list[str]) -> int:
        """How many of `lines` (the unfinished block rendered again) are printed already.

        The same words in another layout (a numbered list's numbers grew a digit) count as
        printed. Changed words (a markup span closed and re-wrapped the lines) are printed
        again from the first changed line: seen twice rather than lost.
        """
        shown = self._shown
        now = [_plain(line) for line in lines[: len(shown)]]
        if now != shown:
            if len(now) == len(shown) and "".join(now).split() == "".join(shown).split():
                self._shown = now
            else:
                changed = next(
                    i for i, (a, b) in enumerate(zip([*now, None], shown, strict=False)) if a != b
                )
                self._shown = shown[:changed]
        return len(self._shown)

    def _thinking(self) -> str:
        if self.show_reasoning:
            thought = " ".join("".join(self._reasoning)[-600:].split()[-60:])
            return self._styled("thinking… " + thought, "dim italic")
        words = len("".join(self._reasoning).split())
        return self._styled(f"thinking… ({words} words)", "dim italic")


class _Pinned:
    """A renderable laid out at a given width, whatever the console's width is now."""

    def __init__(self, renderable: RenderableType, width: int) -> None:
        self.renderable = renderable
        self.width = width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from console.render(self.renderable, options.update_width(self.width))


def _lines(rendered: str) -> list[str]:
    lines = _PADDING.sub("", rendered).splitlines(keepends=True)
    if len(lines) > 1 and not _ESCAPE.sub("", lines[-1]):
        reset = lines.pop()  # a style's reset after the last newline is not a row
        lines[-1] += reset
    return lines


def _rows(lines: list[str], width: int) -> list[str]:
    """`lines` cut into rows of at most `width` cells, escapes kept in place."""
    rows: list[str] = []
    for line in lines:
        body = line.rstrip("\n")
        if cell_len(_ESCAPE.sub("", body)) <= width:
            rows.append(line)
            continue
        row, cells = "", 0
        for n, piece in enumerate(_ESCAPES_KEPT.split(body)):
            if n % 2:  # an escape sequence: no cells
                row += piece
                continue
            for char in piece:
                size = get_character_cell_size(char)
                if cells + size > width and cells:
                    rows.append(row + "\n")
                    row, cells = "", 0
                row += char
                cells += size
        rows.append(row + line[len(body) :])
    return rows


def _plain(line: str) -> str:
    return _ESCAPE.sub("", line).rstrip()


def make_renderer(
    console: Console,
    out: IO[str],
    *,
    markdown: bool,
    show_reasoning: bool,
    footer: bool,
    page_marks: bool = False,
    context_limit: int | None = None,
) -> Renderer:
    if markdown:
        return MarkdownRenderer(
            console,
            show_reasoning=show_reasoning,
            footer=footer,
            page_marks=page_marks,
            context_limit=context_limit,
        )
    return PlainRenderer(out, footer=footer, styled=out.isatty(), context_limit=context_limit)
