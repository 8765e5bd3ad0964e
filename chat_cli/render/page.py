"""What `chat` tells the browser page (static/terminal.js) that it cannot see in the text.

A private OSC sequence (number names.PAGE_OSC) marks each code block: `block` at its first row
(the page pins a copy button there) and, once the block is complete, `code;BASE64` with its
exact text, so the page never scrapes its buffer (which holds wrapped, highlighted rows).
Terminals ignore OSC numbers they do not know (xterm, VTE, tmux, xterm.js without the handler);
still, they go out only to the browser terminal (names.SESSION_ENV set) and only to a TTY.

The conversation export goes another way: chat_cli/export.py.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from mixvllm_common.names import PAGE_OSC, SESSION_ENV

OSC = PAGE_OSC
BLOCK = f"\x1b]{OSC};block\x07"
# A bigger block gets no copy button (the page's OSC parser and the replay stay small);
# /copy N still copies it.
MAX_COPY_BYTES = 256 * 1024


def enabled(env: Mapping[str, str], is_tty: bool) -> bool:
    return is_tty and bool(env.get(SESSION_ENV))


def code(text: str) -> str:
    """The sequence that hands a finished block's text to the page ('' when too big)."""
    data = text.encode("utf-8", "replace")
    if not data or len(data) > MAX_COPY_BYTES:
        return ""
    return f"\x1b]{OSC};code;{base64.b64encode(data).decode('ascii')}\x07"
