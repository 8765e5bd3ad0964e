"""Files attached to a question (`/file`, `chat -a`): text files go to the model fenced under
their names, images (png, jpg, webp, gif) as `image_url` data parts for a vision model.

Each file is read once, when it is attached, and kept in the conversation: /retry, autosave,
resume and the history send or keep exactly what was attached. Every file is bounded, and
one that cannot go (binary, too big, not a file) is refused with one line that says why.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chat_cli.errors import ChatError

TEXT_LIMIT = 256 * 1024  # bytes: about 64k tokens, more than most contexts hold
IMAGE_LIMIT = 8 * 1024 * 1024  # bytes: vLLM's default request limit leaves room for this
MAX_FILES = 32  # per question: a glob that matches a whole tree is a mistake
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}
_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}
KINDS = ("text", "image")


class AttachError(ChatError):
    """A file that cannot be attached; nothing of that command was attached."""


@dataclass(frozen=True)
class Attachment:
    name: str  # as the user named it (shown, and given to the model with text files)
    kind: str  # "text" | "image"
    data: str  # the text, or the image's bytes in base64
    size: int  # bytes on disk
    mime: str = "text/plain"

    def label(self) -> str:
        return f"{self.name} ({human_size(self.size)})"

    def part(self) -> dict[str, Any]:
        """The request's content part for an image."""
        return {"type": "image_url", "image_url": {"url": f"data:{self.mime};base64,{self.data}"}}

    def fenced(self) -> str:
        fence = "`" * max(3, _longest_backtick_run(self.data) + 1)
        body = self.data if self.data.endswith("\n") or not self.data else self.data + "\n"
        return f"{self.name}:\n{fence}\n{body}{fence}"


def from_json(value: object) -> Attachment:
    """An attachment as a saved conversation holds it; raises TypeError or KeyError."""
    if not isinstance(value, dict) or value.get("kind") not in KINDS:
        raise TypeError("an attachment is not an object of a known kind")
    return Attachment(
        name=str(value["name"]),
        kind=str(value["kind"]),
        data=str(value["data"]),
        size=int(value["size"]),
        mime=str(value.get("mime") or "text/plain"),
    )


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest


def api_content(text: str, attachments: Sequence[Attachment]) -> str | list[dict[str, Any]]:
    """A user message's `content`: the text with the text files after it, and when there are
    images, the list of parts vision models take."""
    texts = [a.fenced() for a in attachments if a.kind == "text"]
    whole = "\n\n".join([text, *texts]) if text else "\n\n".join(texts)
    images = [a.part() for a in attachments if a.kind == "image"]
    if not images:
        return whole
    return [{"type": "text", "text": whole}, *images] if whole else images


def expand(patterns: Iterable[str], cwd: Path | None = None) -> list[Path]:
    """The files `patterns` name, globs expanded (sorted), each once, in order given."""
    import glob  # noqa: PLC0415 (start-up: only when a file is attached)

    base = cwd or Path.cwd()
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        full = path if path.is_absolute() else base / path
        if glob.has_magic(str(path)):
            matches = sorted(glob.glob(str(full), recursive=True))
            if not matches:
                raise AttachError(f"no file matches {pattern}")
            for match in matches:
                name = Path(match) if path.is_absolute() else Path(match).relative_to(base)
                if Path(match).is_file():  # a glob's folders are not what it meant
                    found.append(name)
        else:
            found.append(path)
    unique = list(dict.fromkeys(found))
    if len(unique) > MAX_FILES:
        raise AttachError(f"{len(unique)} files: at most {MAX_FILES} can go with one question")
    return unique


def read(path: Path, cwd: Path | None = None) -> Attachment:
    """One file, checked: a regular file, within its limit, text (UTF-8) or a known image."""
    name = str(path)
    full = path if path.is_absolute() else (cwd or Path.cwd()) / path
    mime = IMAGE_TYPES.get(full.suffix.lower())
    limit = IMAGE_LIMIT if mime else TEXT_LIMIT
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang the prompt
    except OSError as err:
        raise AttachError(f"cannot attach {name}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise AttachError(f"cannot attach {name}: it is {what}")
        if info.st_size > limit:
            raise _too_big(name, info.st_size, limit, mime)
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(limit + 1)
    except OSError as err:
        raise AttachError(f"cannot attach {name}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew since fstat
        raise _too_big(name, len(data), limit, mime)
    if mime is not None:
        if not _is_image(data, mime):
            raise AttachError(
                f"cannot attach {name}: it is not a {mime.split('/')[1].upper()} image "
                f"({human_size(len(data))})"
            )
        import base64  # noqa: PLC0415 (start-up: only when an image is attached)

        encoded = base64.b64encode(data).decode("ascii")
        return Attachment(name, "image", encoded, len(data), mime)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"  # refused just below, with the same words
    if "\0" in text:
        raise AttachError(
            f"cannot attach {name}: it is binary ({human_size(len(data))}); text files "
            f"(UTF-8) and images ({', '.join(sorted({k[1:] for k in IMAGE_TYPES}))}) can go"
        )
    return Attachment(name, "text", text, len(data))


def load(patterns: Iterable[str], cwd: Path | None = None) -> list[Attachment]:
    """Every file `patterns` name, or AttachError for the first that cannot go."""
    return [read(path, cwd) for path in expand(patterns, cwd)]


def _too_big(name: str, size: int, limit: int, mime: str | None) -> AttachError:
    what = "images" if mime else "text files"
    return AttachError(
        f"cannot attach {name}: it is {human_size(size)}, over the {human_size(limit)} "
        f"limit for {what}"
    )


def _is_image(data: bytes, mime: str) -> bool:
    if mime == "image/webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return data.startswith(_MAGIC[mime])


class Pending:
    """The files /file attached, waiting for the next question."""

    def __init__(self, files: Iterable[Attachment] = ()) -> None:
        self.files = list(files)

    def add(self, arg: str) -> list[Attachment]:
        """Attach the files `arg` names (shell words, globs); all of them or none."""
        import shlex  # noqa: PLC0415 (only for /file)

        try:
            words = shlex.split(arg)
        except ValueError as err:
            hint = "quote a name with spaces: /file 'my notes.txt'"
            raise AttachError(f"/file: {err} ({hint})") from None
        added = load(words)
        names = {a.name for a in added}
        kept = [a for a in self.files if a.name not in names]  # attached again: the new copy
        if len(kept) + len(added) > MAX_FILES:
            raise AttachError(f"at most {MAX_FILES} files can go with one question")
        self.files = kept + added
        return added

    def drop(self) -> int:
        dropped = len(self.files)
        self.files = []
        return dropped

    def take(self) -> tuple[Attachment, ...]:
        taken, self.files = tuple(self.files), []
        return taken
