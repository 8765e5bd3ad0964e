"""Writes each exchange of a session to the history database, and opens a logged
conversation again.

The database is opened at the end of the first exchange, not at start-up: this module does
not import sqlite3, so `chat --help` and the first prompt never wait for it. The JSON
conversations are imported then, once per database. A failure to write is said once, on one
line; the exchange waits in the spool.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from chat_cli import chats
from chat_cli.conversation import Conversation

if TYPE_CHECKING:
    from chat_cli.history.store import Exchange, Store
    from chat_cli.session import Exchanged


class Recorder:
    def __init__(
        self, db: Path, conversations_dir: Path, server: str, warn: Callable[[str], None]
    ) -> None:
        self.db = db
        self.conversations_dir = conversations_dir
        self.server = server
        self.warn = warn
        self.store: Store | None = None
        self.failing = False  # said so already: once until the database works again
        self._conversation: Conversation | None = None
        self._name = ""

    def record(self, done: Exchanged) -> None:
        self.write(self.exchange(done), done)

    def exchange(self, done: Exchanged) -> Exchange:
        from chat_cli.history.store import Exchange  # noqa: PLC0415 (sqlite3: not at start-up)

        session = done.session
        conversation = session.conversation
        if conversation is not self._conversation:
            # Its name for good: a later /save NAME renames the file, not the logged chat.
            self._conversation = conversation
            path = conversation.path or chats.new_autosave_path(self.conversations_dir)
            self._name = path.stem
        answers = session.answers
        first = answers[0] if answers else None
        last = answers[-1] if answers else None
        usages = [a.usage for a in answers if a.usage is not None]
        records = session.tools.records if session.tools is not None else []
        sampling = dataclasses.asdict(session.sampling)
        # The role and a named server go with the settings: no column of their own.
        named = session.server if session.server != "default" else None
        sampling |= {"role": session.role, "server_name": named}
        return Exchange(
            uid=f"{time.time_ns():x}-{secrets.token_hex(6)}",
            conversation=self._name,
            created=conversation.created,
            system=conversation.system,
            started=done.began,
            ended=time.time(),
            question=done.question,
            answer="\n\n".join(a.text for a in answers if a.text),
            messages=conversation.to_json()["messages"][done.start :],
            reasoning="\n\n".join(a.reasoning_text for a in answers if a.reasoning_text) or None,
            tool_calls=[dataclasses.asdict(r) for r in records] or None,
            note=done.failure or session.last_note,
            model=sampling.pop("model"),
            server=session.client.base_url,  # /server may have changed it
            sampling={k: v for k, v in sampling.items() if v is not None},
            ttft_s=first.ttft if first else None,
            tokens_per_s=last.tokens_per_s if last else None,
            prompt_tokens=usages[-1].prompt_tokens if usages else None,
            completion_tokens=sum(u.completion_tokens for u in usages) if usages else None,
            tokens_estimated=any(u.estimated for u in usages),
        )

    def write(self, exchange: Exchange, done: Exchanged | None = None) -> None:
        from chat_cli.history.spool import drain  # noqa: PLC0415
        from chat_cli.history.store import HistoryError  # noqa: PLC0415

        try:
            store = self._open(exchange, done)
            kept = drain(store)
            store.add([exchange])
        except HistoryError as err:
            self._close()
            self._keep(exchange, str(err))
            return
        if self.failing:
            self.failing = False
            self.warn(f"history: written again to {self.db} ({kept} kept exchanges with it)")

    def _open(self, exchange: Exchange, done: Exchanged | None) -> Store:
        from chat_cli.history.store import HistoryError, Store  # noqa: PLC0415

        if self.store is None:
            store = Store(self.db)
            try:
                store.import_once(self.conversations_dir, exchange.conversation, _before(done))
            except HistoryError:
                store.close()
                raise
            self.store = store
        return self.store

    def _close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def _keep(self, exchange: Exchange, why: str) -> None:
        from chat_cli.history.spool import spool, spool_path  # noqa: PLC0415

        try:
            spool(self.db, exchange)
        except OSError as err:
            self.warn(f"history: {why}; cannot keep this exchange either ({err.strerror})")
            return
        if not self.failing:
            self.failing = True
            self.warn(
                f"history: {why}; kept in {spool_path(self.db)}, written when the database "
                "works again"
            )

    def close(self) -> None:
        self._close()


def _before(done: Exchanged | None) -> tuple[Conversation, float] | None:
    """The conversation as it was before this exchange: its file is not imported (it holds
    this exchange too), this is."""
    if done is None:
        return None
    conversation = done.session.conversation
    earlier = dataclasses.replace(conversation, messages=conversation.messages[: done.start])
    return earlier, done.began


def restore(db: Path, conversations_dir: Path, name: str) -> Path | None:
    """Write the logged conversation `name` into the conversation folder so it can be resumed
    like a saved one; None when the history has no such conversation."""
    from chat_cli.history.store import HistoryError, Store  # noqa: PLC0415

    try:
        store = Store(db, create=False)
    except HistoryError:
        return None
    try:
        found = store.conversation(name)
    except HistoryError:
        return None
    finally:
        store.close()
    if found is None:
        return None
    path = chats.named_path(conversations_dir, name)
    found.save(path, make_dirs=True)
    return path
