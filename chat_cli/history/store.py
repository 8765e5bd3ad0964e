"""The history database: one SQLite file of every exchange, searchable with FTS5.

The file and its WAL are owner-only (they hold every question and answer). WAL lets several
`chat` processes write at once; a writer waits up to BUSY_TIMEOUT_S for another's lock.
An exchange that cannot be written waits in a spool (chat_cli.history.spool). Each row carries
a unique id: given twice, it is written once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from chat_cli import chats
from chat_cli import conversation as conv_mod
from chat_cli.errors import ChatError

SCHEMA_VERSION = 1  # the file's user_version once _SCHEMA is in it
BUSY_TIMEOUT_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, created REAL NOT NULL, system TEXT, model TEXT
);
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    conversation TEXT NOT NULL REFERENCES conversations(id),
    started REAL NOT NULL,
    ended REAL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    reasoning TEXT,
    tool_calls TEXT,
    messages TEXT NOT NULL,
    note TEXT,
    model TEXT,
    server TEXT,
    sampling TEXT,
    ttft_s REAL,
    tokens_per_s REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    tokens_estimated INTEGER
);
CREATE INDEX IF NOT EXISTS exchanges_started ON exchanges(started);
CREATE INDEX IF NOT EXISTS exchanges_conversation ON exchanges(conversation, id);
CREATE VIRTUAL TABLE IF NOT EXISTS exchanges_fts USING fts5(
    question, answer, content='exchanges', content_rowid='id'
);
CREATE TRIGGER IF NOT EXISTS exchanges_fts_add AFTER INSERT ON exchanges BEGIN
    INSERT INTO exchanges_fts(rowid, question, answer) VALUES (new.id, new.question, new.answer);
END;
CREATE TRIGGER IF NOT EXISTS exchanges_fts_drop AFTER DELETE ON exchanges BEGIN
    INSERT INTO exchanges_fts(exchanges_fts, rowid, question, answer)
    VALUES ('delete', old.id, old.question, old.answer);
END;
PRAGMA user_version = 1;
"""
# The snippet's highlight marks: split on them, never shown as they are.
MARK_ON, MARK_OFF = "\x02", "\x03"


class HistoryError(Exception):
    """The database cannot be used; the message says why in a few words."""


# Named tuples, not dataclasses: a dataclass costs ~1 ms of each one-shot to define.
class Exchange(NamedTuple):
    """One question and all that came of it; `messages` are the conversation's messages it
    added (the question, answers, tool calls and results), as the JSON conversations hold them."""

    uid: str
    conversation: str
    created: float  # the conversation's
    system: str | None
    started: float
    ended: float | None
    question: str
    answer: str
    messages: list[dict[str, Any]]
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    note: str | None = None
    model: str | None = None
    server: str | None = None
    sampling: dict[str, Any] | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_estimated: bool = False


class Hit(NamedTuple):
    """A row of `chat logs` or a search; `snippet` has MARK_ON/MARK_OFF around matches."""

    id: int
    conversation: str
    started: float
    model: str | None
    server: str | None
    question: str
    answer: str
    snippet: str | None
    details: dict[str, Any]


def describe(err: BaseException) -> str:
    text = str(err)
    if isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError):
        return f"the database is damaged ({text}; move it away and chat starts a new one)"
    if "locked" in text or "busy" in text:
        return "the database is locked by another process"
    return text


def _owner_only(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created 0600 before SQLite opens it: its WAL and shared-memory files copy this mode.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class Store:
    """An open history database. Raises HistoryError when it cannot be opened or read."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        try:
            if create:
                _owner_only(path)
            elif not path.is_file():
                raise HistoryError(f"no history yet ({path} does not exist)")
            self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            raise HistoryError(f"cannot open {path}: {describe(err)}") from err
        try:
            self.db.execute("PRAGMA synchronous=NORMAL")
            if self.db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                # Once per file. One transaction: executescript commits what is open first.
                self.db.execute("PRAGMA journal_mode=WAL")  # stays with the file
                self.db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except sqlite3.Error as err:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            self.db.close()
            raise HistoryError(f"cannot use {path}: {describe(err)}") from err

    def close(self) -> None:
        self.db.close()

    def _transaction(self) -> _Tx:
        return _Tx(self.db)

    # -- writing -------------------------------------------------------------------------
    def add(self, exchanges: list[Exchange]) -> None:
        """Write the exchanges in one transaction (each once, however often it is given)."""
        try:
            with self._transaction():
                for exchange in exchanges:
                    self._insert(exchange)
        except sqlite3.Error as err:
            raise HistoryError(describe(err)) from err

    def _insert(self, ex: Exchange) -> None:
        self.db.execute(
            "INSERT INTO conversations VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "system = excluded.system, model = excluded.model",
            (ex.conversation, ex.created, ex.system, ex.model),
        )
        self.db.execute(
            "INSERT OR IGNORE INTO exchanges (uid, conversation, started, ended, question, "
            "answer, reasoning, tool_calls, messages, note, model, server, sampling, ttft_s, "
            "tokens_per_s, prompt_tokens, completion_tokens, tokens_estimated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ex.uid, ex.conversation, ex.started, ex.ended, ex.question, ex.answer,
                ex.reasoning, _json(ex.tool_calls), json.dumps(ex.messages, ensure_ascii=False),
                ex.note, ex.model, ex.server, _json(ex.sampling), ex.ttft_s, ex.tokens_per_s,
                ex.prompt_tokens, ex.completion_tokens, int(ex.tokens_estimated),
            ),
        )  # fmt: skip

    def import_once(
        self,
        directory: Path,
        current: str = "",
        before: tuple[conv_mod.Conversation, float] | None = None,
    ) -> int:
        """Import the JSON conversations of `directory` the first time this database is used.
        The file of conversation `current` also holds the exchange being written: `before`
        (that conversation without it, and when it was left) is imported in its place.
        Returns how many conversations were imported."""
        done = "SELECT 1 FROM meta WHERE key = 'imported'"
        try:
            if self.db.execute(done).fetchone():
                return 0  # the usual case, without taking the write lock
            with self._transaction():
                if self.db.execute(done).fetchone():
                    return 0
                count = 0
                for path in chats.newest_first(directory):
                    if path.stem == current:
                        continue
                    try:
                        loaded = conv_mod.load(path)
                        ended = path.stat().st_mtime
                    except (ChatError, OSError):
                        continue  # not a chat (/chats says so), or gone meanwhile
                    count += self._import(path.stem, loaded, ended)
                if before is not None and before[0].messages:
                    count += self._import(current, *before)
                self.db.execute("INSERT INTO meta VALUES ('imported', ?)", (str(time.time()),))
                return count
        except sqlite3.Error as err:
            raise HistoryError(describe(err)) from err

    def _import(self, name: str, conversation: conv_mod.Conversation, ended: float) -> int:
        if self.db.execute("SELECT 1 FROM conversations WHERE id = ?", (name,)).fetchone():
            return 0
        for exchange in split(name, conversation, ended):
            self._insert(exchange)
        return 1

    # -- reading -------------------------------------------------------------------------
    def recent(
        self, limit: int, *, model: str | None = None, since: float | None = None
    ) -> list[Hit]:
        return self._query(_RECENT, (model, model, since, since, limit))

    def search(
        self, text: str, limit: int, *, model: str | None = None, since: float | None = None
    ) -> list[Hit]:
        """The exchanges whose question or answer hold every word of `text`, best first."""
        query = fts_query(text)
        if not query:
            return []
        return self._query(_SEARCH, (query, model, model, since, since, limit))

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Hit]:
        try:
            rows = self.db.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise HistoryError(f"cannot read {self.path}: {describe(err)}") from err
        return [_hit(row) for row in rows]

    def conversation(self, name: str) -> conv_mod.Conversation | None:
        """The conversation `name` as its exchanges left it, or None if there is none."""
        try:
            head = self.db.execute(
                "SELECT created, system, model FROM conversations WHERE id = ?", (name,)
            ).fetchone()
            if head is None:
                return None
            rows = self.db.execute(
                "SELECT messages FROM exchanges WHERE conversation = ? ORDER BY id", (name,)
            ).fetchall()
        except sqlite3.Error as err:
            raise HistoryError(f"cannot read {self.path}: {describe(err)}") from err
        messages = [m for (text,) in rows for m in json.loads(text)]
        return conv_mod.from_json(
            {"created": head[0], "system": head[1], "model": head[2], "messages": messages}
        )


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error: a writer takes the lock first, so
    two writers wait for each other (busy timeout) rather than fail on an upgrade."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            self.db.execute("ROLLBACK")


_COLUMNS = (
    "e.id, e.conversation, e.started, e.model, e.server, e.question, e.answer, e.ended, "
    "e.reasoning, e.tool_calls, e.note, e.sampling, e.ttft_s, e.tokens_per_s, "
    "e.prompt_tokens, e.completion_tokens, e.tokens_estimated"
)
_FILTERS = "(? IS NULL OR e.model = ?) AND (? IS NULL OR e.started >= ?)"
# Constants only: every value is a parameter.
_RECENT = (
    "SELECT " + _COLUMNS + ", NULL FROM exchanges e WHERE " + _FILTERS  # noqa: S608
    + " ORDER BY e.id DESC LIMIT ?"
)  # fmt: skip
_SEARCH = (
    "SELECT " + _COLUMNS + ", snippet(exchanges_fts, -1, char(2), char(3), '…', 16) "
    "FROM exchanges_fts JOIN exchanges e ON e.id = exchanges_fts.rowid "
    "WHERE exchanges_fts MATCH ? AND " + _FILTERS + " ORDER BY bm25(exchanges_fts) LIMIT ?"
)  # fmt: skip


def _hit(row: tuple[Any, ...]) -> Hit:
    (id_, conversation, started, model, server, question, answer, ended, reasoning, calls, note,
     sampling, ttft, tps, prompt, completion, estimated, snippet) = row  # fmt: skip
    details = {
        "ended": ended,
        "reasoning": reasoning,
        "tool_calls": json.loads(calls) if calls else None,
        "note": note,
        "sampling": json.loads(sampling) if sampling else None,
        "ttft_s": ttft,
        "tokens_per_s": tps,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens_estimated": bool(estimated),
    }
    return Hit(id_, conversation, started, model, server, question, answer, snippet, details)


def fts_query(text: str) -> str:
    """Each word a quoted prefix, all of them required (`zebra` finds `zebras`): what a user
    types is never FTS5 syntax (a `-`, `:` or `"` in it is a syntax error there)."""
    return " ".join('"' + word.replace('"', '""') + '"*' for word in text.split())


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def split(name: str, conversation: conv_mod.Conversation, ended: float) -> Iterator[Exchange]:
    """A saved conversation as exchanges: each user message starts one."""
    data = conversation.to_json()
    groups: list[list[dict[str, Any]]] = []
    for message in data["messages"]:
        if message["role"] == "user" or not groups:
            groups.append([])
        groups[-1].append(message)
    for index, group in enumerate(groups):
        question = group[0]["content"] if group[0]["role"] == "user" else ""
        answers = [m for m in group if m["role"] == "assistant"]
        calls = [c for m in answers for c in m.get("tool_calls") or ()]
        last = answers[-1] if answers else None
        yield Exchange(
            uid=f"import:{name}:{index}",
            conversation=name,
            created=conversation.created,
            system=conversation.system,
            started=conversation.created,
            ended=ended,
            question=question,
            answer=last["content"] if last else "",
            messages=group,
            reasoning=last.get("reasoning") if last else None,
            tool_calls=calls or None,
            note=last.get("incomplete") if last else None,
            model=conversation.model,
        )


def open_history(path: Path, conversations_dir: Path) -> Store | None:
    """The history to read (`chat logs`, `/search`), with the JSON conversations imported if
    that has not happened yet; None when there is neither a database nor a conversation."""
    if not path.is_file() and not chats.newest_first(conversations_dir):
        return None
    store = Store(path)
    try:
        store.import_once(conversations_dir)
    except HistoryError:
        store.close()
        raise
    return store
