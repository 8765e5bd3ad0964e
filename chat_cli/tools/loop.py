"""Running the calls of one answer: show each, ask before running it, run it, show the result.

Every outcome (a result, a refusal, a bad call, an MCP error, Ctrl-C) becomes one `tool`
message for the model, so the conversation always answers every call it holds.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import IO, TYPE_CHECKING

from chat_cli.api.answer import ToolCall
from chat_cli.conversation import Message
from chat_cli.tools.toolbox import (
    CANCELLED,
    REFUSED,
    Record,
    Tool,
    Toolbox,
    ToolError,
    parse_arguments,
    pretty_arguments,
    size_text,
    truncate,
)
from mixvllm_common.terminal_text import visible

if TYPE_CHECKING:
    from concurrent.futures import Future

SHOWN_LINES = 3  # of a result, before /last-tool
WAKE_S = 0.1  # how often a wait on a tool looks up (Ctrl-C is acted on at once anyway)
DIM, RED, YELLOW, BOLD, RESET = "\x1b[2m", "\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[0m"


class ToolView:
    """Tool calls on the terminal (or stderr in one-shot mode). `stdin` is None when there is
    no terminal to ask on."""

    def __init__(self, out: IO[str], stdin: IO[str] | None, *, styled: bool) -> None:
        self.out = out
        self.stdin = stdin
        self.styled = styled

    def _line(self, text: str, style: str = "") -> None:
        text = visible(text)  # names, arguments, results and errors come from the model or tools
        self.out.write(f"{style}{text}{RESET}\n" if style and self.styled else text + "\n")
        self.out.flush()

    def call(self, name: str, arguments: str) -> None:
        pretty = pretty_arguments(arguments)
        if "\n" in pretty:
            self._line(f"⚙ {name}", BOLD)
            for line in pretty.splitlines():
                self._line(f"  {line}")
        else:
            self._line(f"⚙ {name} {pretty}", BOLD)

    def ask(self, name: str) -> str:
        """y, n or a (always); KeyboardInterrupt on Ctrl-C."""
        assert self.stdin is not None
        name = visible(name)
        prompt = f"  run {name}? [y]es / [n]o / [a]lways for {name} in this chat: "
        key = _read_key(self.stdin, self.out, f"{YELLOW}{prompt}{RESET}" if self.styled else prompt)
        key = key.lower()
        answer = key if key in ("y", "n", "a") else "n"
        self.out.write({"y": "yes", "a": "always", "n": "no"}[answer] + "\n")
        self.out.flush()
        return answer

    def result(self, text: str) -> None:
        lines = text.splitlines() or [""]
        for line in lines[:SHOWN_LINES]:
            self._line(f"  │ {line[:200]}", DIM)
        more = " · /last-tool shows it whole" if len(lines) > SHOWN_LINES else ""
        self._line(f"  └ {size_text(text)}{more}", DIM)

    def error(self, name: str, text: str) -> None:
        self._line(f"  ✗ {name}: {' '.join(text.split())}", RED)

    def problem(self, text: str) -> None:
        self._line(f"✗ {text}", RED)

    def notice(self, text: str) -> None:
        self._line(text, DIM)


def _read_key(stdin: IO[str], out: IO[str], prompt: str) -> str:
    """Show `prompt`, read one key without waiting for Enter; Ctrl-C still interrupts (cbreak
    keeps signals). Keys typed before the question are dropped first: they answer nothing."""
    fd = stdin.fileno()
    try:
        import termios  # noqa: PLC0415
        import tty  # noqa: PLC0415

        saved = termios.tcgetattr(fd)
    except (ImportError, OSError):
        out.write(prompt)
        out.flush()
        return stdin.readline()[:1]
    try:
        tty.setcbreak(fd)
        with contextlib.suppress(termios.error):
            termios.tcflush(fd, termios.TCIFLUSH)
        out.write(prompt)
        out.flush()
        data = os.read(fd, 1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    return data.decode("utf-8", "replace")


def terminal_stdin() -> IO[str] | None:
    return sys.stdin if sys.stdin.isatty() else None


def run_calls(
    toolbox: Toolbox, calls: list[ToolCall], view: ToolView
) -> tuple[list[Message], bool]:
    """One `tool` message per call, and whether the user cancelled (Ctrl-C): the calls after
    a cancelled one are not run."""
    exposed = toolbox.exposed() if calls else {}
    messages: list[Message] = []
    cancelled = False
    for call in calls:
        if cancelled:
            text = f"error: {CANCELLED}"
        else:
            try:
                text = _run(toolbox, exposed, call, view)
            except KeyboardInterrupt:
                view.error(call.name, CANCELLED)
                text, cancelled = f"error: {CANCELLED}", True
        toolbox.records.append(Record(call.name, call.arguments, text, text.startswith("error:")))
        messages.append(Message("tool", text, tool_call_id=call.id, name=call.name))
    return messages, cancelled


def _run(toolbox: Toolbox, exposed: dict[str, Tool], call: ToolCall, view: ToolView) -> str:
    view.call(call.name or "(no name)", call.arguments)
    try:
        tool = exposed.get(call.name)
        if tool is None:
            known = ", ".join(exposed) or "none"
            raise ToolError(f"unknown tool {call.name!r} (the tools are: {known})")
        arguments = parse_arguments(call.arguments, tool.schema)
        _permit(toolbox, call.name, view)
        assert toolbox.source is not None
        text = _wait(toolbox.source.call(tool, arguments, toolbox.timeout))
    except ToolError as err:
        view.error(call.name, str(err))
        return f"error: {err}"
    view.result(text)
    toolbox.last_result = text
    return truncate(text)


def _permit(toolbox: Toolbox, name: str, view: ToolView) -> None:
    if toolbox.yes or name in toolbox.always:
        return
    if view.stdin is None:
        raise ToolError(f"{REFUSED}: no terminal to confirm it on (--yes allows tool calls)")
    answer = view.ask(name)
    if answer == "a":
        toolbox.always.add(name)
    elif answer != "y":
        raise ToolError(REFUSED)


def _wait(future: Future[str]) -> str:
    try:
        while True:
            try:
                return future.result(WAKE_S)
            except TimeoutError:  # concurrent.futures' own since 3.11
                continue
    except BaseException:
        future.cancel()  # Ctrl-C: the call is cancelled in the MCP loop, not waited for
        raise
