"""The conversation folder: autosaved and named chats, `--resume`, `/chats` and retention.

REPL chats are autosaved here as `YYYYmmdd-HHMMSS-xxxxxx.json`; `/save NAME` turns the current
one into `NAME.json`. Unnamed files beyond the newest KEEP_UNNAMED are deleted when a REPL
starts; named ones are never deleted. One-shot runs are saved only with `--resume`.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from chat_cli import conversation as conv_mod
from chat_cli.errors import ChatError

KEEP_UNNAMED = 100
_AUTOSAVE = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
_NAME = re.compile(r"\w[\w.-]{0,99}")
# A /save or /load argument with one of these suffixes (or a slash) is a file, not a name.
FILE_SUFFIXES = frozenset({".json", ".md", ".markdown"})


def new_autosave_path(directory: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return directory / f"{stamp}-{secrets.token_hex(3)}.json"


def is_named(path: Path) -> bool:
    return _AUTOSAVE.fullmatch(path.stem) is None


def could_be_name(text: str) -> bool:
    """A word that may name a saved conversation (one word: no spaces, no punctuation)."""
    return _NAME.fullmatch(text.removesuffix(".json")) is not None


def is_name(text: str) -> bool:
    """A conversation name rather than a file path."""
    return (
        "/" not in text
        and not text.startswith("~")
        and Path(text).suffix.lower() not in FILE_SUFFIXES
    )


def named_path(directory: Path, name: str) -> Path:
    if _NAME.fullmatch(name) is None:
        raise ChatError(
            f"{name!r} is not a conversation name (letters, digits, '.', '-', '_'; "
            "a path or a .md/.json name saves a file instead)"
        )
    return directory / f"{name}.json"


def find(directory: Path, name: str) -> Path | None:
    """The saved conversation called `name` (with or without `.json`), if there is one."""
    stem = name.removesuffix(".json")
    if _NAME.fullmatch(stem) is None:
        return None
    path = directory / f"{stem}.json"
    return path if path.is_file() else None


def newest_first(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    stamped = []
    for path in directory.glob("*.json"):
        try:
            stamped.append((path.stat().st_mtime, path.name, path))
        except OSError:  # deleted meanwhile by another chat's pruning
            continue
    return [path for *_, path in sorted(stamped, reverse=True)]


def latest(
    directory: Path, warn: Callable[[str], None]
) -> tuple[Path, conv_mod.Conversation] | None:
    """The newest conversation that loads; each one that does not is named through `warn`."""
    for path in newest_first(directory):
        try:
            return path, conv_mod.load(path)
        except ChatError as err:
            warn(f"{err}; skipped it")
    return None


def prune(directory: Path, keep: int = KEEP_UNNAMED, current: Path | None = None) -> int:
    """Delete the unnamed conversations beyond the newest `keep`; returns how many went."""
    unnamed = [p for p in newest_first(directory) if not is_named(p) and p != current]
    gone = 0
    for path in unnamed[keep:]:
        try:
            path.unlink()
            gone += 1
        except OSError:
            continue
    return gone


def summary(path: Path) -> str:
    """`NAME  date  N messages  first question`, one line for /chats."""
    try:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
        data = json.loads(path.read_text(encoding="utf-8"))
        messages = [m for m in data["messages"] if isinstance(m, dict)]
        first = next((str(m["content"]) for m in messages if m.get("role") == "user"), "")
        about = " ".join(first.split())
        about = about if len(about) <= 50 else about[:49] + "…"
        return f"{path.stem}  {when}  {len(messages):>3} messages  {about}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path.stem}  (not readable as a saved chat)"
