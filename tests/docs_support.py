"""Reading the docs the way a tested claim needs them: a page's section by its heading, the
code blocks in it, and headings as the anchors GitHub makes of them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def pages() -> list[Path]:
    """The front page and every page of the manual."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose_lines(text: str) -> list[tuple[str, bool]]:
    """Each line with whether it is outside a fenced code block (where `#` is a comment)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            lines.append((line, False))
        else:
            lines.append((line, not fenced))
    return lines


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every heading outside code blocks."""
    found = []
    for line, prose in _prose_lines(text):
        match = _HEADING.match(line) if prose else None
        if match:
            found.append((len(match.group(1)), match.group(2)))
    return found


def slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, repeated titles numbered the way GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for _, title in headings(text):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def section(path: Path, title: str) -> str:
    """The text under the heading `title` in `path`, up to the next heading of its level or
    above. Fails the test when the page has no such heading: the anchor is the contract."""
    text = path.read_text(encoding="utf-8")
    taken: list[str] = []
    level = 0
    for line, prose in _prose_lines(text):
        match = _HEADING.match(line) if prose else None
        if match and level and len(match.group(1)) <= level:
            break
        if level:
            taken.append(line)
        elif match and match.group(2) == title:
            level = len(match.group(1))
    if not level:
        raise AssertionError(f"{path.relative_to(ROOT)} has no heading {title!r}")
    return "\n".join(taken) + "\n"


def code_blocks(text: str, language: str = "") -> list[str]:
    """The fenced code blocks of `text` whose info string is `language` ("" for any)."""
    pattern = r"^\s*```(\w*)[^\n]*\n(.*?)^\s*```"
    return [body for lang, body in re.findall(pattern, text, re.M | re.S)
            if not language or lang == language]  # fmt: skip
