"""The conversation export: chat keeps a copy of the conversation (JSON and markdown, as /save
writes them) in the folder the terminal server gives each session (names.EXPORT_ENV), and the
page asks the server for it with the owner's token. Nothing in the terminal stream carries it,
so a share link's viewer cannot read it.

Standard library only: the terminal server's session user runs it with the system's python.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path

from chat_cli.conversation import Conversation, write_atomic
from mixvllm_common.names import EXPORT_ENV, EXPORT_JSON, EXPORT_MARKDOWN


def export(conversation: Conversation, env: Mapping[str, str]) -> None:
    """Keep the session's export folder up to date (when the terminal server made one)."""
    folder = env.get(EXPORT_ENV)
    if not folder or not Path(folder).is_dir():
        return
    try:
        # A setgid folder is a --session-user's: its group is the server's, which reads it.
        mode = 0o640 if Path(folder).stat().st_mode & stat.S_ISGID else 0o600
        write_atomic(Path(folder, EXPORT_JSON), conversation.json_text(), False, mode)
        write_atomic(Path(folder, EXPORT_MARKDOWN), conversation.to_markdown(), False, mode)
    except OSError:
        pass  # the page's export then offers the previous state; the chat goes on
