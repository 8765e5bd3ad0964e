"""Markdown whose code blocks carry the browser page's markers (see chat_cli/render/page.py).

A module of its own: it imports rich.markdown, which chat loads only once it renders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from rich.markdown import CodeBlock, Markdown, MarkdownElement
from rich.segment import ControlType, Segment

from chat_cli.render.page import BLOCK, code

if TYPE_CHECKING:
    from markdown_it.token import Token
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult


def _control(sequence: str) -> Segment:
    # A control segment takes no cells: rich's layout (lists, quotes, cropping) is unchanged.
    return Segment(sequence, None, [(ControlType.BELL,)])


class _MarkedCodeBlock(CodeBlock):
    final = False

    @classmethod
    def create(cls, markdown: Markdown, token: Token) -> CodeBlock:
        block = super().create(markdown, token)
        if isinstance(block, _MarkedCodeBlock):
            block.final = isinstance(markdown, MarkedMarkdown) and markdown.final
        return block

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield _control(BLOCK)
        sequence = code(str(self.text)) if self.final else ""
        if not sequence:
            yield from super().__rich_console__(console, options)
            return
        # The text goes at the end of the block's last row: after it, it would start a row.
        syntax = cast("RenderableType", next(iter(super().__rich_console__(console, options))))
        lines = console.render_lines(syntax, options, pad=False)
        for row, line in enumerate(lines, 1):
            yield from line
            if row == len(lines):
                yield _control(sequence)
            yield Segment.line()


class MarkedMarkdown(Markdown):
    """Markdown whose code blocks carry the page's markers; `final`: the text is complete."""

    elements: ClassVar[dict[str, type[MarkdownElement]]] = {
        **Markdown.elements,
        "fence": _MarkedCodeBlock,
        "code_block": _MarkedCodeBlock,
    }

    def __init__(self, markup: str, *, code_theme: str, final: bool) -> None:
        super().__init__(markup, code_theme=code_theme)
        self.final = final
