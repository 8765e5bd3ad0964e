"""`chat logs`: the latest exchanges, or those a full-text search finds, from the history.

`chat logs` is this command when `logs` is the first argument and nothing follows it or an
option does (`chat logs -q nginx`); `chat logs are too big, why?` is a question, and so is
`chat -- logs`. Everything shown comes from the database: untrusted, so made visible first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from chat_cli.config import default_paths
from chat_cli.errors import ChatError, ConfigError
from chat_cli.history.store import MARK_OFF, MARK_ON, HistoryError, Hit, Store, open_history
from mixvllm_common.terminal_text import json_safe, visible

DEFAULT_COUNT = 10
_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
HIGHLIGHT = ("\x1b[1;4m", "\x1b[22;24m")


def is_logs_command(argv: Sequence[str]) -> bool:
    return bool(argv) and argv[0] == "logs" and (len(argv) == 1 or argv[1].startswith("-"))


def since(text: str, now: float | None = None) -> float:
    """`30m`, `2h`, `7d`, `1w` ago, or a local date or time (`2026-12-01`, `2026-12-01 10:00`)."""
    now = time.time() if now is None else now
    ago = _AGO.fullmatch(text.strip().lower())
    if ago:
        return now - float(ago.group(1)) * _UNIT_S[ago.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(
            "needs a time ago (30m, 2h, 7d, 1w) or a date (2026-12-01, 2026-12-01 10:00)"
        ) from None


def _count(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError("needs a whole number >= 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat logs",
        description="The latest exchanges from the history, or those a search finds.",
        epilog="Continue a conversation shown here: chat --resume ID (or /load ID in chat).",
    )
    parser.add_argument("-n", type=_count, default=DEFAULT_COUNT, metavar="N",
                        help=f"how many exchanges (default {DEFAULT_COUNT})")  # fmt: skip
    parser.add_argument("-q", "--query", metavar="TEXT",
                        help="full-text search: exchanges with every word, best first")  # fmt: skip
    parser.add_argument("-m", "--model", metavar="NAME", help="only this model's")
    parser.add_argument("--since", metavar="WHEN", help="only newer ones: 2h, 7d, 2026-12-01")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    return parser


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    args = build_parser().parse_args(list(argv))
    try:
        after = None if args.since is None else since(args.since)
    except ValueError as err:
        raise ConfigError(f"--since {args.since!r}: {err}") from err
    paths = default_paths(os.environ)
    store = _open(paths.history_db, paths.conversations_dir)
    if store is None:
        path = visible(str(paths.history_db))
        sys.stderr.write(f"chat: no history yet ({path} does not exist)\n")
        return 0
    try:
        if args.query is not None:
            hits = store.search(args.query, args.n, model=args.model, since=after)
        else:
            hits = store.recent(args.n, model=args.model, since=after)
    except HistoryError as err:
        raise ChatError(f"history: {err}") from err
    finally:
        store.close()
    if args.json:
        document = json.dumps([hit_json(h) for h in hits], ensure_ascii=False, indent=1)
        out.write(json_safe(document) + "\n")
        return 0
    styled = out.isatty()
    for line in lines(hits, _width(out), styled=styled):
        out.write(line + "\n")
    if not hits:
        sys.stderr.write("chat: nothing found\n" if args.query else "chat: no exchanges yet\n")
    return 0


def _width(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError):
        return 100


def _open(path: Path, conversations_dir: Path) -> Store | None:
    try:
        return open_history(path, conversations_dir)
    except HistoryError as err:
        raise ChatError(f"history: {err}") from err


def search(path: Path, conversations_dir: Path, text: str, limit: int) -> list[Hit]:
    """The best `limit` hits for `text`; raises ChatError when the history cannot be read."""
    store = _open(path, conversations_dir)
    if store is None:
        return []
    try:
        return store.search(text, limit)
    except HistoryError as err:
        raise ChatError(f"history: {err}") from err
    finally:
        store.close()


def lines(
    hits: Sequence[Hit], width: int, *, styled: bool, resume: str = "chat --resume"
) -> list[str]:
    """Three lines a hit: its head, the question, and the answer or the search's snippet."""
    shown: list[str] = []
    room = max(20, width - 4)
    for hit in hits:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(hit.started))
        model = visible(one_line(hit.model or "?"))
        head = f"#{hit.id}  {when}  {model}  {resume} {visible(hit.conversation)}"
        shown.append(f"\x1b[2m{head}\x1b[22m" if styled else head)
        shown.append("  > " + _cut(visible(one_line(hit.question)), room))
        if hit.snippet is not None:
            shown.append("    " + snippet(hit.snippet, room, styled=styled))
        else:
            shown.append("    " + _cut(visible(one_line(hit.answer)) or "(no answer)", room))
    return shown


def one_line(text: str) -> str:
    return " ".join(text.split())


def _cut(text: str, room: int) -> str:
    return text if len(text) <= room else text[: room - 1] + "…"


def snippet(text: str, room: int, *, styled: bool) -> str:
    """The snippet on one line, its matches highlighted (bold and underlined on a terminal,
    `[...]` elsewhere); each piece made visible on its own, so the marks stay ours."""
    on, off = HIGHLIGHT if styled else ("[", "]")
    parts: list[str] = []
    used = 0
    for index, raw in enumerate(re.split(f"[{MARK_ON}{MARK_OFF}]", one_line(text))):
        piece = visible(raw)
        if used + len(piece) > room:
            piece = piece[: max(0, room - used - 1)] + "…"
        used += len(piece)
        parts.append(f"{on}{piece}{off}" if index % 2 else piece)
        if used >= room:
            break
    return "".join(parts)


def hit_json(hit: Hit) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": hit.id,
        "conversation": hit.conversation,
        "started": hit.started,
        "model": hit.model,
        "server": hit.server,
        "question": hit.question,
        "answer": hit.answer,
        **hit.details,
    }
    if hit.snippet is not None:
        data["snippet"] = hit.snippet.replace(MARK_ON, "[").replace(MARK_OFF, "]")
    return data
