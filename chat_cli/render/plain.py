"""What every way of showing an answer shares: the renderer interface, the footer line, and
the plain-text renderer (pipes, `--plain`, `--json`: no Rich import)."""

from __future__ import annotations

import math
from typing import IO, Protocol

from chat_cli.api.answer import Answer
from mixvllm_common.terminal_text import visible

DIM = "\x1b[2m"
YELLOW = "\x1b[33m"
RED = "\x1b[31m"
RESET = "\x1b[0m"
NO_VALUE = "\N{EN DASH}"
WARN_SHARE = 0.75  # the context's share shown in yellow from here, in red from FULL_SHARE
FULL_SHARE = 0.90


def footer_text(answer: Answer) -> str:
    parts = []
    if answer.ttft is not None:
        parts.append(f"TTFT {answer.ttft:.2f} s")
    rate = answer.tokens_per_s
    if rate is not None:
        parts.append(f"{rate:.1f} tok/s")
    elif answer.first_token_at is not None:
        parts.append(f"{NO_VALUE} tok/s")  # too short an answer to tell a rate
    if answer.usage is not None:
        approx = "~" if answer.usage.estimated else ""
        parts.append(
            f"{approx}{answer.usage.prompt_tokens} prompt + "
            f"{approx}{answer.usage.completion_tokens} completion tokens"
        )
    parts.append(f"{answer.elapsed:.1f} s")
    return " · ".join(parts)


def context_share(tokens: int, limit: int, *, approx: bool) -> tuple[str, str | None]:
    """`context 1,234/4,096 (30 %)` and its level: "full" from 90 %, "warn" from 75 %."""
    share = tokens / limit
    level = "full" if share >= FULL_SHARE else "warn" if share >= WARN_SHARE else None
    mark = "~" if approx else ""
    return f"context {mark}{tokens:,}/{limit:,} ({percent(share)})", level


def percent(share: float) -> str:
    # Floored, as the levels are: 89.9 % reads 89 %, as it is below the red line.
    return f"{math.floor(share * 100)} %"


def answer_share(answer: Answer, limit: int | None) -> tuple[str, str | None] | None:
    """The share of the context the request and its answer took; None: unknown."""
    if limit is None or answer.usage is None:
        return None
    usage = answer.usage
    tokens = usage.prompt_tokens + usage.completion_tokens
    return context_share(tokens, limit, approx=usage.estimated)


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
    """The deltas as they come, controls made visible: for pipes, --plain and --json (whose
    JSON has the exact text). Reasoning never reaches `out`."""

    def __init__(
        self, out: IO[str], *, footer: bool, styled: bool, context_limit: int | None = None
    ) -> None:
        self.out = out
        self.footer = footer
        self.styled = styled
        self.context_limit = context_limit
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
        self.out.write(visible(text))
        self.out.flush()
        self._ends_with_newline = text.endswith("\n")

    def finish(self, answer: Answer, note: str | None) -> None:
        lines = []
        if note:
            lines.append(self._style(f"[{note}]", YELLOW))
        if self.footer and answer.first_token_at is not None:
            line = self._style(footer_text(answer), DIM)
            share = answer_share(answer, self.context_limit)
            if share is not None:
                text, level = share
                colour = {"warn": YELLOW, "full": RED}.get(level or "", DIM)
                line += self._style(" · ", DIM) + self._style(text, colour)
            lines.append(line)
        text = "" if self._ends_with_newline else "\n"
        if lines:
            text += "\n".join(lines) + "\n"
        self.out.write(text)
        self.out.flush()

    def _style(self, text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if self.styled else text
