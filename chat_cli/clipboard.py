"""`/copy`: what to copy (an answer or one of its code blocks) and how to get it there.

A clipboard tool (wl-copy, xclip, pbcopy) says whether it worked; OSC 52 cannot: many
terminals (GNOME Terminal, tmux by default) drop it silently, so the message says what was
sent, not that it was copied. In the browser terminal (MIXVLLM_SESSION is set) a tool would
copy on the server's desktop, not the user's, so OSC 52 goes to the page's clipboard addon.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import IO

from chat_cli.errors import ChatError
from mixvllm_common.names import SESSION_ENV

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
TOOL_TIMEOUT_S = 5.0


def code_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a markdown text, without their fences."""
    blocks: list[str] = []
    fence: str | None = None
    lines: list[str] = []
    for line in markdown.splitlines():
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence, lines = match.group(1), []
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            if not line.strip().lstrip(fence[0]):  # a closing fence has no info string
                blocks.append("\n".join(lines) + "\n")
                fence = None
                continue
            lines.append(line)
        else:
            lines.append(line)
    if fence is not None and lines:  # an answer cut off inside a block
        blocks.append("\n".join(lines) + "\n")
    return blocks


def pick(answer: str, arg: str) -> tuple[str, str]:
    """(text, what it is) for `/copy`, `/copy code` or `/copy N`."""
    if not arg:
        return answer, "the last answer"
    blocks = code_blocks(answer)
    if arg not in ("code", "last") and not arg.isdigit():
        raise ChatError("usage: /copy (the last answer), /copy code (its last code block), /copy N")
    if not blocks:
        raise ChatError("the last answer has no code blocks; /copy copies all of it")
    if not arg.isdigit():
        return blocks[-1], f"code block {len(blocks)} of {len(blocks)}"
    number = int(arg)
    if not 1 <= number <= len(blocks):
        raise ChatError(f"the last answer has {_blocks(len(blocks))}; /copy 1..{len(blocks)}")
    return blocks[number - 1], f"code block {number} of {len(blocks)}"


def _blocks(count: int) -> str:
    return "1 code block" if count == 1 else f"{count} code blocks"


def tool(env: Mapping[str, str]) -> list[str] | None:
    """A clipboard command for this desktop, or None (browser terminal, SSH, none installed)."""
    if env.get(SESSION_ENV):
        return None
    path = env.get("PATH")
    if env.get("WAYLAND_DISPLAY") and shutil.which("wl-copy", path=path):
        return ["wl-copy"]
    if env.get("DISPLAY") and shutil.which("xclip", path=path):
        return ["xclip", "-selection", "clipboard"]
    if shutil.which("pbcopy", path=path):  # macOS only
        return ["pbcopy"]
    return None


def copy(text: str, what: str, out: IO[str], env: Mapping[str, str]) -> str:
    """Copy `text`; returns the line that says what was done."""
    size = f"{what} ({len(text)} characters)"
    command = tool(env)
    failed = ""
    if command is not None:
        try:
            # Output to DEVNULL: xclip stays behind to own the selection and keeps pipes open.
            subprocess.run(
                command,
                input=text.encode("utf-8", "replace"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=TOOL_TIMEOUT_S,
                check=True,
                env=dict(env),
            )
        except (OSError, subprocess.SubprocessError) as err:
            failed = f"{command[0]} failed ({type(err).__name__}); "
        else:
            return f"Copied {size} with {command[0]}."
    payload = base64.b64encode(text.encode("utf-8", "replace")).decode("ascii")
    out.write(f"\x1b]52;c;{payload}\x07")
    if env.get(SESSION_ENV):
        return f"Sent {size} to the browser's clipboard (OSC 52)."
    return (
        f"{failed}Sent {size} to the terminal as an OSC 52 clipboard request; "
        "terminals that ignore it (GNOME Terminal, tmux by default) copy nothing."
    )
