"""Untrusted text made safe to show on a terminal (chat's every output; shared, so that the
terminal server's own messages can use it too).

Everything chat did not write itself (answers, reasoning, tool arguments and results, tool,
server and model names, error bodies, file and conversation names) goes through `visible`
before it reaches a terminal: a control character would be acted on, not shown (OSC 52 sets
the clipboard, OSC 0/2 the title, CSI 2J clears the screen, OSC 7337 forges the page's copy
buttons). They are shown in caret notation instead: ESC as `^[`, BEL as `^G`, DEL as `^?`,
and the 8-bit C1 controls (U+0080-U+009F, CSI is U+009B) as `<U+009B>`. Newline and tab stay.

Linear and fast on a megabyte answer: ASCII text goes through one `str.translate` with a
table built once (~1 GB/s); other text through one regex pass (~200 MB/s), as CPython's
translate of non-ASCII text looks each character up in the table (~5 MB/s).
Saved conversations and `--json` keep the original text.
"""

from __future__ import annotations

import re

_KEPT = {"\n", "\t"}


def _table() -> dict[int, str]:
    table = {code: f"^{chr(code + 0x40)}" for code in range(0x20) if chr(code) not in _KEPT}
    table[0x7F] = "^?"
    table.update({code: f"<U+{code:04X}>" for code in range(0x80, 0xA0)})
    return table


_VISIBLE = _table()
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# For JSON, which escapes C0 itself: DEL and C1 as \u escapes, the same string once parsed.
_JSON = {code: f"\\u{code:04x}" for code in (0x7F, *range(0x80, 0xA0))}


def visible(text: str) -> str:
    """`text` with every control character but newline and tab shown, not executed."""
    if text.isascii():
        return text.translate(_VISIBLE)
    return _CONTROL.sub(_shown, text)


def _shown(match: re.Match[str]) -> str:
    return _VISIBLE[ord(match.group())]


def json_safe(json_text: str) -> str:
    """JSON text (from json.dumps(ensure_ascii=False)) with DEL and C1 escaped too: those
    characters appear only inside strings, where `\\u007f` parses back to the same text."""
    return json_text.translate(_JSON)
