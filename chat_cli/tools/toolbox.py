"""Tools as the model sees them: OpenAI function tools made from MCP tools, the arguments it
sends, the results it gets back, and which tools are on in this chat.

Nothing here imports the MCP SDK: chat without tools configured never pays for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from chat_cli.errors import ConfigError
from chat_cli.tools.mcp_config import TOOL_CHOICES as CHOICES

if TYPE_CHECKING:
    from concurrent.futures import Future

RESULT_LIMIT = 16_000  # characters of a result sent back to the model
CANCELLED = "cancelled by the user"
REFUSED = "the user did not allow this call"
_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class ToolError(Exception):
    """A call that went wrong: its message goes back to the model as the call's result."""


@dataclass(frozen=True)
class Tool:
    server: str
    name: str  # the MCP tool's own name
    description: str
    schema: dict[str, Any]

    def to_openai(self, exposed: str) -> dict[str, Any]:
        function = {"name": exposed, "description": self.description, "parameters": self.schema}
        return {"type": "function", "function": function}


class Source(Protocol):
    """Where tools come from (the MCP hub)."""

    def start(self) -> None: ...
    def tools(self) -> list[Tool]: ...
    def call(self, tool: Tool, arguments: dict[str, Any], timeout: float) -> Future[str]: ...
    def describe(self) -> list[tuple[str, str, list[Tool]]]:
        """(server name, its state and where it runs, its tools) for each server."""

    def revive(self, server: str) -> bool:
        """Start a server that is down again (False: it was not down)."""


def result_text(content: Iterable[Any], structured: object = None) -> str:
    """An MCP result's content as text: text parts joined, other parts named."""
    parts = []
    for item in content:
        text = getattr(item, "text", None)
        if text is not None:
            parts.append(str(text))
        else:
            kind = getattr(item, "type", "content")
            mime = getattr(item, "mime_type", None)
            parts.append(f"[{kind}{': ' + mime if mime else ''}]")
    if not parts and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False))
    return "\n".join(parts)


def parse_arguments(text: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's arguments: a JSON object (empty text counts as none).

    Small models send a bare value instead (SmolLM2 on vLLM sends `"Paris"`). One rule for
    every tool: a bare value is taken where it can mean only one thing. A tool without
    parameters gets none, a tool with exactly one gets the value as that one, and for any
    other tool the call is refused with an error that names the parameters it takes.
    """
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ToolError(f"the arguments are not valid JSON ({err.msg}): {_clip(text)}") from None
    if isinstance(value, dict):
        return value
    properties = list((schema or {}).get("properties") or {})
    if schema is not None and not properties:
        return {}
    if len(properties) == 1:
        return {properties[0]: value}
    expected = f" with {', '.join(properties)}" if properties else ""
    raise ToolError(f"the arguments must be a JSON object{expected}, got: {_clip(text)}")


def pretty_arguments(text: str) -> str:
    """Arguments for the eye: one line when short, indented JSON when not, raw if not JSON."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return text
    flat = json.dumps(value, ensure_ascii=False)
    return flat if len(flat) <= 80 else json.dumps(value, ensure_ascii=False, indent=2)


def truncate(text: str, limit: int = RESULT_LIMIT) -> str:
    """What is sent back: at most `limit` characters, with a note saying what was cut."""
    if len(text) <= limit:
        return text
    return (
        text[:limit]
        + f"\n[truncated by chat: {len(text) - limit} of {len(text)} characters not shown]"
    )


def size_text(text: str) -> str:
    lines = text.count("\n") + 1 if text else 0
    return f"{lines} line{'s' if lines != 1 else ''}, {len(text)} chars"


def _clip(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass
class Record:
    """One call as run in this chat: for /last-tool and --json."""

    name: str
    arguments: str
    result: str
    error: bool


@dataclass
class Toolbox:
    """The tools on in this chat, what the model may be made to do, and the user's choices."""

    source: Source | None
    choice: str = "auto"  # auto, required, none, or a tool's name
    yes: bool = False  # run calls without asking
    max_rounds: int = 8
    timeout: float = 60.0
    disabled: set[str] = field(default_factory=set)  # tool and server names
    always: set[str] = field(default_factory=set)  # tools allowed for the rest of the chat
    records: list[Record] = field(default_factory=list)
    last_result: str | None = None  # the last result, whole, for /last-tool
    started: bool = False

    def start(self) -> None:
        if self.source is not None and not self.started:
            self.started = True
            self.source.start()

    def exposed(self) -> dict[str, Tool]:
        """The enabled tools by the name the model sees: the tool's own name, made safe for
        the API, and prefixed with its server's when two servers share it."""
        self.start()
        tools = self.source.tools() if self.source is not None else []
        on = [t for t in tools if t.server not in self.disabled and t.name not in self.disabled]
        names = [_NAME.sub("_", t.name)[:64] for t in on]
        out = {}
        for tool, name in zip(on, names, strict=True):
            unique = name if names.count(name) == 1 else f"{tool.server}_{tool.name}"
            out[_NAME.sub("_", unique)[:64]] = tool
        return out

    def request_params(self, first_round: bool) -> dict[str, Any] | None:
        """`tools` and `tool_choice` for a request; a forced choice holds for the first round
        only, or the model could never answer."""
        exposed = self.exposed()
        if not exposed:
            return None
        choice: Any = self.choice if first_round else "auto"
        if choice not in CHOICES:
            choice = {"type": "function", "function": {"name": choice}}
        return {
            "tools": [tool.to_openai(name) for name, tool in exposed.items()],
            "tool_choice": choice,
        }

    def ignored(self, answer_calls: int) -> str | None:
        """After a first round that forced a tool: a note when the server answered without
        calling one (some engines, llama.cpp's among them, read a forced choice as "auto")."""
        if answer_calls or self.choice in ("auto", "none") or not self.exposed():
            return None
        what = "no tool was" if self.choice == "required" else f"{self.choice} was not"
        return f"{what} called: the server ignored tool_choice {self.choice}"

    def toggle(self, name: str, on: bool) -> str:
        """Turn a server or a tool on or off; what it was, for the user."""
        self.start()
        servers = self.source.describe() if self.source is not None else []
        if any(server == name for server, _, _ in servers):
            what = f"server {name}"
        elif any(t.name == name for _, _, tools in servers for t in tools):
            what = f"tool {name}"
        else:
            raise ValueError(f"no server or tool named {name!r}; /tools lists them")
        if on:
            self.disabled.discard(name)
            if what.startswith("server") and self.source is not None and self.source.revive(name):
                state = next(s for n, s, _ in self.source.describe() if n == name)
                return f"{what} on, started again: {state.split(' · ')[0]}"
        else:
            self.disabled.add(name)
        return f"{what} {'on' if on else 'off'}"

    def lines(self) -> list[str]:
        """/tools: each server, its state, its tools."""
        self.start()
        out = []
        for server, state, tools in self.source.describe() if self.source is not None else []:
            off = " (off)" if server in self.disabled else ""
            out.append(f"  {server}{off}: {state}")
            for tool in tools:
                usable = not (tool.name in self.disabled or off or state.startswith("down"))
                mark = "✓" if usable else "✗"
                always = " · always allowed" if tool.name in self.always else ""
                line = tool.description.strip().splitlines()[0] if tool.description else ""
                out.append(f"    {mark} {tool.name}{always}  {_clip(line, 70)}")
        confirm = "never asks (--yes)" if self.yes else "asks before each call"
        out.append(f"  tool_choice: {self.choice} · {confirm} · up to {self.max_rounds} rounds")
        return out

    def set_choice(self, choice: str) -> None:
        if choice not in CHOICES and choice not in self.exposed():
            raise ValueError(f"needs auto, required, none or a tool's name, got {choice!r}")
        self.choice = choice

    def check_choice(self) -> None:
        """Before a question: a tool named by --tool-choice must be an enabled one (a name
        the server does not know gets a 400 at best, and is ignored at worst)."""
        if self.choice in CHOICES:
            return
        exposed = self.exposed()
        if self.choice not in exposed:
            names = ", ".join(exposed) or "none"
            raise ConfigError(
                f"tool_choice {self.choice!r} is not an enabled tool (the tools are: {names}); "
                "use auto, required, none or one of them",
                "/tools choice sets it",
                "--tool-choice sets it",
            )
