"""Streaming markdown rendering, asserted on visible text (and on a terminal emulator's screen)."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pyte
import pytest
from rich.console import Console
from rich.markdown import Markdown

from chat_cli.api.answer import Answer, Usage
from chat_cli.render.markdown import SYNC_END, MarkdownRenderer
from chat_cli.render.plain import PlainRenderer, footer_text
from tests.chat_support import PROMPT_READY, XtermScreen, chat_env, fake_server, visible
from tests.fake_openai import tokens

DOC = """# Release notes

Intro paragraph with **bold** text and `code`.

- first item
- second item

```python
def answer():

    return 42
```

| name | value |
|------|-------|
| alpha | 1 |

3. third step
4. fourth step

Closing words.
"""


def plain_console(width: int = 80) -> Console:
    return Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)


def stream(renderer: MarkdownRenderer, text: str) -> None:
    for piece in tokens(text):
        renderer.content(piece)


def finished(**usage: int) -> Answer:
    answer = Answer(started=10.0, first_token_at=10.5, ended_at=11.5)
    answer.usage = Usage(usage.get("prompt", 10), usage.get("completion", 20), True)
    return answer


def lines_of(text: str) -> list[str]:
    return [line.rstrip() for line in visible(text).splitlines() if line.strip()]


def test_streamed_output_matches_rendering_the_whole_answer() -> None:
    console = plain_console()
    renderer = MarkdownRenderer(console, live=False, footer=False)
    stream(renderer, DOC)
    renderer.finish(finished(), None)
    out = console.file.getvalue()  # type: ignore[attr-defined]

    whole = plain_console()
    whole.print(Markdown(DOC))
    assert lines_of(out) == lines_of(whole.file.getvalue())  # type: ignore[attr-defined]
    text = visible(out)
    for needle in (
        "Release notes",
        "• first item",
        "def answer():",
        "return 42",
        "alpha",
        "fourth step",
    ):
        assert text.count(needle) == 1, needle
    assert "```" not in text and "**" not in text


def test_finished_blocks_are_printed_before_the_answer_ends() -> None:
    console = plain_console()
    renderer = MarkdownRenderer(console, live=False)
    stream(renderer, "First paragraph here.\n\nSecond one is still")
    assert "First paragraph here." in visible(console.file.getvalue())  # type: ignore[attr-defined]
    assert renderer.pending == "Second one is still"
    renderer.content(" typing\n\n```\nopen code\n\n")
    assert renderer.pending.startswith("```"), "a code block stays open across blank lines"


def test_indented_continuation_keeps_the_list_item_together() -> None:
    console = plain_console()
    renderer = MarkdownRenderer(console, live=False, footer=False)
    text = "- item one\n\n  more of item one\n\n- item two\n\nAfter.\n"
    stream(renderer, text)
    renderer.finish(finished(), None)
    whole = plain_console()
    whole.print(Markdown(text))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert lines_of(out) == lines_of(whole.file.getvalue())  # type: ignore[attr-defined]


def test_each_block_is_rendered_once_so_cost_is_linear() -> None:
    rendered: list[int] = []

    class Counting(MarkdownRenderer):
        def _render_markdown(self, markdown: str) -> str:
            rendered.append(len(markdown))
            return super()._render_markdown(markdown)

    long_doc = DOC * 40
    renderer = Counting(plain_console(), live=False, footer=False)
    stream(renderer, long_doc)
    renderer.finish(finished(), None)
    assert sum(rendered) <= len(long_doc)
    assert len(rendered) >= 40 * 6, "the answer was rendered block by block"


def on_screen(output: str, width: int = 60, height: int = 20) -> str:
    """What a terminal shows (scrollback included) after receiving `output`."""
    screen = pyte.HistoryScreen(width, height, history=2000)
    screen.set_mode(pyte.modes.LNM)  # a PTY turns \n into \r\n
    pyte.Stream(screen).feed(output)
    rows = [
        "".join(line[x].data for x in range(screen.columns)).rstrip()
        for line in list(screen.history.top)
    ] + [row.rstrip() for row in screen.display]
    return "\n".join(rows)


def terminal_console() -> Console:
    return Console(file=io.StringIO(), width=60, height=20, force_terminal=True, color_system="256")


class EveryPiece(MarkdownRenderer):
    """Redraws the live region on every piece (no throttling), the hardest case."""

    def _due(self) -> bool:
        return True


def test_live_reasoning_preview_is_erased_and_hidden_mode_shows_only_a_count() -> None:
    for show in (True, False):
        console = terminal_console()
        renderer = EveryPiece(console, show_reasoning=show)
        for piece in tokens("I should greet them politely."):
            renderer.reasoning(piece)
        live = visible(console.file.getvalue())  # type: ignore[attr-defined]
        assert "thinking…" in live
        assert ("politely" in live) == show
        assert ("(5 words)" in live) == (not show)
        stream(renderer, "Hello!\n")
        renderer.finish(finished(), None)
        shown = on_screen(console.file.getvalue())  # type: ignore[attr-defined]
        assert "politely" not in shown and "thinking" not in shown
        assert ("▸ reasoning: 5 words" in shown) == show
        assert "Hello!" in shown


def test_live_region_leaves_each_line_once_on_a_terminal() -> None:
    console = terminal_console()
    renderer = EveryPiece(console)
    renderer.begin()
    assert visible(console.file.getvalue()).strip() == "…"  # type: ignore[attr-defined]
    stream(renderer, DOC * 3)
    renderer.finish(finished(), "interrupted")

    shown = on_screen(console.file.getvalue())  # type: ignore[attr-defined]
    assert shown.count("Release notes") == 3
    assert shown.count("return 42") == 3
    assert shown.count("Closing words.") == 3
    assert shown.count("[interrupted]") == 1
    assert shown.count("tok/s") == 1
    assert "```" not in shown and "…" not in shown


def test_reasoning_collapses_to_one_line_and_stays_out_of_the_answer() -> None:
    console = plain_console()
    renderer = MarkdownRenderer(console, live=False, footer=False)
    for piece in tokens("I should greet them politely."):
        renderer.reasoning(piece)
    stream(renderer, "Hello!\n")
    renderer.finish(finished(), None)
    text = visible(console.file.getvalue())  # type: ignore[attr-defined]
    assert "▸ reasoning: 5 words" in text
    assert "politely" not in text
    assert text.index("reasoning") < text.index("Hello!")


def test_plain_renderer_writes_deltas_note_and_footer() -> None:
    out = io.StringIO()
    renderer = PlainRenderer(out, footer=True, styled=False)
    for piece in tokens("Just **text**"):
        renderer.content(piece)
    renderer.finish(finished(), "interrupted")
    assert out.getvalue().splitlines() == [
        "Just **text**",
        "[interrupted]",
        footer_text(finished()),
    ]


def test_footer_shows_ttft_speed_and_tokens() -> None:
    assert footer_text(finished(prompt=12, completion=40)) == (
        "TTFT 0.50 s · 40.0 tok/s · ~12 prompt + ~40 completion tokens · 1.5 s"
    )


def test_a_tiny_answer_has_no_token_rate() -> None:
    """3 tokens in 0.1 ms would be 30000 tok/s: too short a time to tell a rate."""
    answer = Answer(started=10.0, first_token_at=10.2, ended_at=10.2001)
    answer.usage = Usage(5, 3, False)
    assert answer.tokens_per_s is None
    assert footer_text(answer) == (
        "TTFT 0.20 s · \N{EN DASH} tok/s · 5 prompt + 3 completion tokens · 0.2 s"
    )


class Terminal:
    """A console whose output lands on an xterm.js-like screen; both resize together, the way
    a PTY's size follows the browser terminal's."""

    def __init__(self, width: int, height: int, *, tmux: bool = False) -> None:
        self.console = Console(
            file=io.StringIO(), width=width, height=height, force_terminal=True, color_system="256"
        )
        self.screen = XtermScreen(width, height, keep_cursor_row=tmux)
        self._fed = 0

    def pump(self) -> None:
        output = self.console.file.getvalue()  # type: ignore[attr-defined]
        self.screen.feed(output[self._fed :])
        self._fed = len(output)

    def resize(self, width: int, height: int) -> None:
        self.pump()
        self.screen.reflow(width, height)
        self.console.width, self.console.height = width, height

    def resize_screen_only(self, width: int, height: int) -> None:
        """The screen changes size before the PTY follows: chat's next frames are drawn for
        the old size and shown at the new one (a browser resizes itself first; tmux reads the
        PTY's output when it gets round to it)."""
        self.pump()
        self.screen.reflow(width, height)

    def words(self) -> list[str]:
        self.pump()
        return re.findall(r"w\d{3}", " ".join(self.screen.transcript()))


WORDS = [f"w{i:03}" for i in range(120)]
PARAGRAPH = " ".join(WORDS[:60]) + "\n\n" + " ".join(WORDS[60:]) + "\n"


@pytest.mark.parametrize("tmux", [False, True])
@pytest.mark.parametrize(
    ("before", "after"),
    [((60, 24), (40, 24)), ((60, 24), (90, 24)), ((80, 30), (50, 20)), ((50, 20), (80, 30))],
)
def test_a_resize_mid_answer_neither_duplicates_nor_loses_lines(
    before: tuple[int, int], after: tuple[int, int], tmux: bool
) -> None:
    terminal = Terminal(*before, tmux=tmux)
    renderer = EveryPiece(terminal.console)
    renderer.begin()
    pieces = tokens("# Title\n\nFirst paragraph done.\n\n" + PARAGRAPH + "\n" + DOC)
    for piece in pieces:
        renderer.content(piece)
        # Mid-paragraph: the unfinished paragraph is the live tail. Resize there, and back.
        if "w040" in piece:
            terminal.resize(*after)
        elif "w100" in piece:
            terminal.resize(*before)
    renderer.finish(finished(), None)

    assert terminal.words() == WORDS
    shown = terminal.screen.transcript()
    for needle in ("Title", "First paragraph done.", "Release notes", "return 42", "tok/s"):
        assert sum(needle in line for line in shown) == 1, needle
    assert not any("…" in line for line in shown)


@pytest.mark.parametrize("tmux", [False, True])
@pytest.mark.parametrize("first", [(45, 24), (100, 30)])
def test_frames_drawn_for_a_narrow_screen_and_shown_on_a_wider_one_lose_nothing(
    first: tuple[int, int], tmux: bool
) -> None:
    """A drag that narrows the terminal and widens it again: frames drawn for the narrow
    width land on the wide screen, whose rows hold more. The live region's rows are never
    wider than the width they were drawn for, so a wider screen cannot join them and the
    count of rows to erase still holds: nothing above the region is erased."""
    terminal = Terminal(90, 20, tmux=tmux)
    terminal.console.file.write("Connected\n> go\n")
    renderer = EveryPiece(terminal.console)
    renderer.begin()
    for piece in tokens("# Title\n\n" + PARAGRAPH + "\n" + DOC):
        renderer.content(piece)
        if "w030" in piece:
            terminal.resize(*first)
            renderer.resized()
        elif "w040" in piece:
            terminal.resize(45, 24)
            renderer.resized()
        elif "w045" in piece:
            terminal.resize_screen_only(100, 30)
        elif "w055" in piece:
            terminal.resize(100, 30)
            renderer.resized()
    renderer.finish(finished(), None)
    assert terminal.words() == WORDS
    shown = terminal.screen.transcript()
    for needle in ("Title", "Connected", "Release notes", "return 42", "tok/s"):
        assert sum(needle in line for line in shown) == 1, needle


@pytest.mark.parametrize("tmux", [False, True])
def test_a_resize_near_the_top_of_the_screen_loses_nothing(tmux: bool) -> None:
    """The answer starts under a short banner; the terminal narrows to half its width while
    the first paragraph is the live tail. tmux keeps the cursor's screen row, so a live region
    taller than the rows above the cursor would be pushed where no redraw can erase it."""
    terminal = Terminal(80, 24, tmux=tmux)
    terminal.console.file.write("Connected\n/help\n> go\n")  # the REPL's banner and prompt
    renderer = EveryPiece(terminal.console)
    renderer.begin()
    for piece in tokens(" ".join(WORDS) + "\n"):  # one paragraph, 8 lines at 80 columns
        renderer.content(piece)
        if "w100" in piece:
            terminal.resize(40, 24)
    renderer.finish(finished(), None)
    assert terminal.words() == WORDS
    assert terminal.screen.transcript()[:3] == ["Connected", "/help", "> go"]


@pytest.mark.parametrize("tmux", [False, True])
def test_every_word_of_a_long_paragraph_stays_on_screen_while_it_streams(tmux: bool) -> None:
    """The live region is a few rows: finished wrapped lines go to the scrollback as they
    complete, so nothing streamed so far is ever missing from the screen, across a resize."""
    terminal = Terminal(60, 24, tmux=tmux)
    terminal.console.file.write("Connected\n> go\n")
    renderer = EveryPiece(terminal.console)
    renderer.begin()
    text = "Some **bold** words, `code` and *more* to start.\n\n" + " ".join(WORDS) + "\n"
    streamed: list[str] = []
    for piece in tokens(text):
        renderer.content(piece)
        streamed += re.findall(r"w\d{3}", piece)
        if "w070" in piece:
            terminal.resize(40, 24)
        assert terminal.words() == streamed, f"after {piece!r}"
    renderer.finish(finished(), None)
    assert terminal.words() == WORDS
    shown = terminal.screen.transcript()
    assert sum("Some bold words, code and more to start." in line for line in shown) == 1


@pytest.mark.parametrize("span", [8, 40])
def test_a_markup_span_that_closes_lines_later_loses_nothing(span: int) -> None:
    """A short span is held live until it closes: shown once. One longer than the live region
    is printed before it closes; when it closes, its lines are printed again (seen twice),
    never lost."""
    terminal = Terminal(30, 24)
    renderer = EveryPiece(terminal.console)
    renderer.begin()
    bold = " ".join(WORDS[10 : 10 + span])
    rest = " ".join(WORDS[10 + span : 60])
    for piece in tokens(" ".join(WORDS[:10]) + f" **{bold}** {rest}\n"):
        renderer.content(piece)
    renderer.finish(finished(), None)
    words = terminal.words()
    if span < 10:
        assert words == WORDS[:60]
    else:
        assert sorted(set(words)) == WORDS[:60]
        assert words[-(60 - 10 - span) :] == WORDS[10 + span : 60]
    assert not any("**" in line for line in terminal.screen.transcript()[-3:])


def test_in_a_pty_every_streamed_word_is_on_screen_while_it_streams(
    spawn_chat: Callable[..., pexpect.spawn], tmp_path: Path
) -> None:
    """The real chat on a PTY, its output on a terminal screen: after each complete frame,
    the words on screen are exactly those streamed so far, in order; at the end, each once."""
    words = [f"w{i:03}" for i in range(150)]  # one paragraph of 15 lines at 60 columns
    with fake_server(answer=" ".join(words) + "\n", token_delay=0.01) as server:
        child = spawn_chat(env=chat_env(tmp_path, server.url), dimensions=(24, 60))
        child.expect(PROMPT_READY)
        screen = XtermScreen(60, 24)
        screen.feed(child.before + child.after)
        child.send("go\r")
        output, frames, deadline = "", 0, time.monotonic() + 60
        while "tok/s" not in visible(output):
            assert time.monotonic() < deadline, "no end of the answer"
            try:
                data = child.read_nonblocking(65536, timeout=1)
            except pexpect.TIMEOUT:
                continue
            output += data
            screen.feed(data)
            if output.endswith(SYNC_END):  # a whole frame: the screen is as the user sees it
                frames += 1
                seen = re.findall(r"w\d{3}", " ".join(screen.transcript()))
                assert seen == words[: len(seen)], f"frame {frames}: {seen}"
                assert len(seen) >= min_seen(output, words), f"frame {frames}"
        # The prompt may have come in the same read as the answer's end.
        if not re.search(PROMPT_READY, output.rsplit("tok/s", 1)[1]):
            child.expect(PROMPT_READY)
            screen.feed(child.before)
    assert frames > 10, "the answer was drawn while it streamed"
    assert re.findall(r"w\d{3}", " ".join(screen.transcript())) == words


def min_seen(output: str, words: list[str]) -> int:
    """How many words the frames so far have drawn: the screen must still show them all."""
    drawn = re.findall(r"w\d{3}", visible(output))
    return words.index(max(drawn)) + 1 if drawn else 0


@pytest.mark.parametrize(
    "text",
    [
        "```python\n" + "".join(f"print('c{i:05}')\n" for i in range(2000)) + "```\n",
        " ".join(f"c{i:05}" for i in range(5000)) + "\n",
    ],
    ids=["code block", "paragraph in one line"],
)
def test_a_block_too_big_to_redraw_is_cut_and_loses_nothing(text: str) -> None:
    """A huge block (a pasted log, a megabyte in one chunk) is cut at a line end (a code
    block is closed and opened again there), or at a space, so no redraw renders all of it."""
    console = plain_console()
    renderer = MarkdownRenderer(console, live=False, footer=False)
    renderer.content(text)
    assert len(renderer.pending) <= 16_384
    renderer.finish(finished(), None)
    out = visible(console.file.getvalue())  # type: ignore[attr-defined]
    assert re.findall(r"c\d{5}", out) == re.findall(r"c\d{5}", text)
    assert "```" not in out
