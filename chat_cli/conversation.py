"""The conversation: messages, autosave to the XDG data dir, save/load as JSON or markdown."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chat_cli.errors import ChatError

FORMAT_VERSION = 1


@dataclass
class Message:
    role: str  # "user" | "assistant"
    content: str
    # Why an assistant answer is incomplete ("interrupted", or the error line); None when whole.
    incomplete: str | None = None
    reasoning: str | None = None

    def to_api(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Conversation:
    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    model: str | None = None
    created: float = field(default_factory=time.time)
    path: Path | None = None  # the autosave file; None disables autosave
    autosave_failure: str | None = None  # set when autosave had to stop; the CLI reports it

    def api_messages(self) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.extend(m.to_api() for m in self.messages if m.content or m.role == "user")
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

    def pop_for_retry(self) -> str | None:
        """Remove the last exchange and return its user text, so it can be sent again."""
        user = self.last("user")
        if user is None:
            return None
        self.undo()
        return user.content

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "created": self.created,
            "model": self.model,
            "system": self.system,
            "messages": [asdict(m) for m in self.messages],
        }

    def to_markdown(self) -> str:
        lines = [f"# Chat ({time.strftime('%Y-%m-%d %H:%M', time.localtime(self.created))})", ""]
        if self.model:
            lines += [f"Model: `{self.model}`", ""]
        if self.system:
            lines += ["## System", "", self.system, ""]
        for message in self.messages:
            lines += [f"## {message.role.capitalize()}", "", message.content]
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


def write_atomic(path: Path, text: str, make_dirs: bool) -> None:
    if make_dirs:  # chats can hold private text: an owner-only folder
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: Path) -> Conversation:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        messages = [
            Message(
                role=str(m["role"]),
                content=str(m["content"]),
                incomplete=m.get("incomplete"),
                reasoning=m.get("reasoning"),
            )
            for m in data["messages"]
            if m.get("role") in ("user", "assistant")
        ]
        return Conversation(
            system=data.get("system"),
            messages=messages,
            model=data.get("model"),
            created=float(data.get("created", time.time())),
        )
    except OSError as err:
        raise ChatError(f"cannot read {path}: {err.strerror or err}") from err
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ChatError(f"{path} is not a saved chat (JSON from /save or autosave)") from err
