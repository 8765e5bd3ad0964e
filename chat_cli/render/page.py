"""What `chat` tells the browser page (static/terminal.js) that it cannot see in the text.

A private OSC sequence (number OSC) marks each code block: `block` at its first row (the
page pins a copy button there) and, once the block is complete, `code;BASE64` with its exact
text, so the page never scrapes its buffer (which holds wrapped, highlighted rows). Terminals
ignore OSC numbers they do not know (xterm, VTE, tmux, xterm.js without the handler); still,
they go out only to the browser terminal (MIXVLLM_SESSION set) and only to a TTY.

The conversation export goes another way: chat keeps a copy of the conversation (JSON and
markdown, as /save writes them) in the folder the terminal server gives each session
(MIXVLLM_CHAT_EXPORT), and the page asks the server for it with the owner's token. Nothing
in the terminal stream carries it, so a share link's viewer cannot read it.
"""

from __future__ import annotations

import base64
import stat
from collections.abc import Mapping
from pathlib import Path

from chat_cli.conversation import Conversation, write_atomic

OSC = 7337
BLOCK = f"\x1b]{OSC};block\x07"
# A bigger block gets no copy button (the page's OSC parser and the replay stay small);
# /copy N still copies it.
MAX_COPY_BYTES = 256 * 1024
EXPORT_ENV = "MIXVLLM_CHAT_EXPORT"
EXPORT_JSON = "chat.json"
EXPORT_MARKDOWN = "chat.md"


def enabled(env: Mapping[str, str], is_tty: bool) -> bool:
    return is_tty and bool(env.get("MIXVLLM_SESSION"))


def code(text: str) -> str:
    """The sequence that hands a finished block's text to the page ('' when too big)."""
    data = text.encode("utf-8", "replace")
    if not data or len(data) > MAX_COPY_BYTES:
        return ""
    return f"\x1b]{OSC};code;{base64.b64encode(data).decode('ascii')}\x07"


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
