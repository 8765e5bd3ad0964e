"""The conversation: messages, autosave to the XDG data dir, save/load as JSON or markdown."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chat_cli.errors import ChatError

if TYPE_CHECKING:
    from chat_cli.attach import Attachment

FORMAT_VERSION = 1


ROLES = ("user", "assistant", "tool")


@dataclass
class Message:
    role: str  # "user" | "assistant" | "tool"
    content: str
    # Why an assistant answer is incomplete ("interrupted", or the error line); None when whole.
    incomplete: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's calls, in the API's form
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: str | None = None  # a tool result: the tool's name
    attachments: tuple[Attachment, ...] = ()  # a question's files (chat_cli.attach)

    def to_api(self) -> dict[str, Any]:
        if self.role == "tool":
            return {"role": "tool", "tool_call_id": self.tool_call_id, "content": self.content}
        if self.attachments:
            from chat_cli import attach  # noqa: PLC0415 (start-up: `chat --help` needs none)

            content = attach.api_content(self.content, self.attachments)
            return {"role": self.role, "content": content}
        if self.tool_calls:
            # "" rather than null: llama.cpp's server refuses a null content (OpenAI and
            # vLLM take either).
            return {"role": self.role, "content": self.content, "tool_calls": self.tool_calls}
        return {"role": self.role, "content": self.content}

    def wanted(self) -> bool:
        """Sent to the server: a user's message, a result, an answer with text or calls."""
        return bool(self.content or self.tool_calls) or self.role in ("user", "tool")

    def markdown(self) -> list[str]:
        if self.role == "tool":
            return [f"## Tool result ({self.name})", "", "```", self.content, "```"]
        lines = [f"## {self.role.capitalize()}", "", self.content]
        for attached in self.attachments:
            from chat_cli.attach import human_size  # noqa: PLC0415 (only with attachments)

            shown = attached.fenced() if attached.kind == "text" else f"`{attached.name}`"
            lines += ["", f"**Attached** ({human_size(attached.size)}) {shown}"]
        for call in self.tool_calls or ():
            function = call.get("function") or {}
            args = function.get("arguments") or ""
            lines += ["", f"**Tool call** `{function.get('name')}`", "", "```json", args, "```"]
        return lines


@dataclass
class Conversation:
    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    model: str | None = None
    created: float = field(default_factory=time.time)
    path: Path | None = None  # the autosave file; None disables autosave
    autosave_failure: str | None = None  # set when autosave had to stop; the CLI reports it

    def api_messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = (
            [{"role": "system", "content": self.system}] if self.system else []
        )
        out.extend(m.to_api() for m in self.messages if m.wanted())
        return out

    def last(self, role: str) -> Message | None:
        return next((m for m in reversed(self.messages) if m.role == role), None)

    def undo(self) -> int:
        """Drop the last exchange (the last user message and what followed it)."""
        for index in range(len(self.messages) - 1, -1, -1):
            if self.messages[index].role == "user":
                dropped = len(self.messages) - index
                del self.messages[index:]
                return dropped
        return 0

    def pop_for_retry(self) -> Message | None:
        """Remove the last exchange and return its question, so it can be sent again."""
        user = self.last("user")
        if user is None:
            return None
        self.undo()
        return user

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "created": self.created,
            "model": self.model,
            "system": self.system,
            "messages": [_message_json(m) for m in self.messages],
        }

    def to_markdown(self) -> str:
        lines = [f"# Chat ({time.strftime('%Y-%m-%d %H:%M', time.localtime(self.created))})", ""]
        if self.model:
            lines += [f"Model: `{self.model}`", ""]
        if self.system:
            lines += ["## System", "", self.system, ""]
        for message in self.messages:
            lines += message.markdown()
            if message.incomplete:
                lines += ["", f"*[{message.incomplete}]*"]
            lines.append("")
        return "\n".join(lines)

    def autosave(self) -> None:
        if self.path is not None and (self.messages or self.system):
            try:
                write_atomic(self.path, self.json_text(), make_dirs=True)
            except OSError as err:
                # Losing autosave must not stop the chat: stop saving, say so once.
                self.autosave_failure = (
                    f"autosave stopped: cannot write {self.path} ({err.strerror or err}); "
                    "/save FILE still works"
                )
                self.path = None

    def json_text(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=1)

    def save(self, path: Path, *, make_dirs: bool = False) -> None:
        """Write to `path` (markdown for .md); only the conversation folder is created."""
        markdown = path.suffix.lower() in {".md", ".markdown"}
        if not make_dirs and not path.parent.is_dir():
            raise ChatError(f"cannot save to {path}: no directory {path.parent}")
        try:
            write_atomic(path, self.to_markdown() if markdown else self.json_text(), make_dirs)
        except OSError as err:
            raise ChatError(f"cannot save to {path}: {err.strerror or err}") from err


def _message_json(message: Message) -> dict[str, Any]:
    """Tool fields and attachments only where they are set: chats without them keep their
    old shape."""
    data = asdict(message)
    for key in ("tool_calls", "tool_call_id", "name"):
        if data[key] is None:
            del data[key]
    if data["attachments"]:
        data["attachments"] = list(data["attachments"])
    else:
        del data["attachments"]
    return data


def write_atomic(path: Path, text: str, make_dirs: bool, mode: int = 0o600) -> None:
    if make_dirs:  # chats can hold private text: an owner-only folder
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask: a group-readable export stays readable
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: Path) -> Conversation:
    try:
        return from_json(json.loads(path.read_text(encoding="utf-8")))
    except OSError as err:
        raise ChatError(f"cannot read {path}: {err.strerror or err}") from err
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ChatError(f"{path} is not a saved chat (JSON from /save or autosave)") from err


def from_json(data: Any) -> Conversation:
    """The conversation `to_json` made; raises ValueError, KeyError, TypeError or
    AttributeError for anything else."""
    messages = [
        Message(
            role=str(m["role"]),
            content=str(m["content"]),
            incomplete=m.get("incomplete"),
            reasoning=m.get("reasoning"),
            tool_calls=_tool_calls(m.get("tool_calls")),
            tool_call_id=_text_or_none(m.get("tool_call_id")),
            name=_text_or_none(m.get("name")),
            attachments=_attachments(m.get("attachments")),
        )
        for m in data["messages"]
        if m.get("role") in ROLES
    ]
    return Conversation(
        system=data.get("system"),
        messages=messages,
        model=data.get("model"),
        created=float(data.get("created", time.time())),
    )


def _attachments(value: object) -> tuple[Attachment, ...]:
    if not value:
        return ()
    if not isinstance(value, list):
        raise TypeError("attachments is not a list")
    from chat_cli import attach  # noqa: PLC0415 (only for a chat with attachments)

    return tuple(attach.from_json(a) for a in value)


def _tool_calls(value: object) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise TypeError("tool_calls is not a list of objects")
    return value


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)
