"""Where streamed markdown's finished blocks end.

Each new line is scanned once, so the cost grows linearly with the answer: a blank line
followed by unindented text, a closed code fence or a heading finishes the text before it.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^#{1,6}(\s|$)")
_TABLE = re.compile(r"^ {0,3}\|")
# A block larger than this is cut at a line end anyway: every redraw renders the unfinished
# block, and a huge one (a pasted log, a megabyte in one chunk) would make each one slow.
MAX_BLOCK = 16_384


class Blocks:
    def __init__(self) -> None:
        self.pending = ""  # markdown whose block is not finished yet
        self._scan = 0  # start of the first line of `pending` not scanned yet
        self._fence: tuple[str, int, str] | None = None  # open code fence: char, length, line
        self._candidate: int | None = None  # a blank-line boundary awaiting the next line

    @property
    def table(self) -> bool:
        """The unfinished block is a table: its column widths can change with every row."""
        return self._fence is None and bool(_TABLE.match(self.pending.lstrip("\n")))

    @property
    def code(self) -> bool:
        return self._fence is not None

    def feed(self, text: str) -> str:
        """Add streamed text; return the markdown it finished ('' when none)."""
        self.pending += text
        cut = self._find_cut()
        if cut:
            return self._take(cut)
        if len(self.pending) > MAX_BLOCK:
            return self._split()
        return ""

    def rest(self) -> str:
        """The end of the answer: the unfinished block, as it is."""
        rest, self.pending = self.pending, ""
        self._scan, self._fence, self._candidate = 0, None, None
        return rest

    def _take(self, cut: int) -> str:
        done = self.pending[:cut]
        self.pending = self.pending[cut:]
        self._scan = max(0, self._scan - cut)
        self._candidate = None
        return done

    def _split(self) -> str:
        """Cut an oversized block at its last line end (a code block is closed and opened
        again there); with no line end in it, at its last space."""
        opening = self._fence[2] if self._fence is not None else ""
        cut = self.pending.rfind("\n", len(opening), self._scan) + 1
        if cut <= len(opening):
            cut = self.pending.rfind(" ", len(opening)) + 1
        if cut <= len(opening):
            return ""
        if self._fence is None:
            return self._take(cut)
        char, length, _ = self._fence
        done = self._take(cut)
        done += ("" if done.endswith("\n") else "\n") + char * length + "\n"
        self.pending = opening + self.pending
        self._scan += len(opening)
        return done

    def _find_cut(self) -> int:
        """Scan complete new lines; return the end of the text that is finished (0: none)."""
        cut = 0
        pending = self.pending
        while True:
            newline = pending.find("\n", self._scan)
            if newline < 0:
                # The next line has begun without indentation: the block before is done.
                partial = pending[self._scan : self._scan + 1]
                if self._candidate is not None and partial and not partial.isspace():
                    cut = self._candidate
                    self._candidate = None
                return cut
            start, line = self._scan, pending[self._scan : newline]
            self._scan = newline + 1
            if self._fence is not None:
                char, length, _ = self._fence
                stripped = line.strip()
                if stripped.startswith(char * length) and not stripped.strip(char):
                    self._fence = None
                    cut = self._scan  # a closed code block is finished
                continue
            fence = _FENCE.match(line)
            if fence:
                marker = fence.group(1)
                self._fence = (marker[0], len(marker), line + "\n")
                if not line.startswith((" ", "\t")):
                    cut = start  # a fence ends the paragraph before it
                self._candidate = None
                continue
            if not line.strip():
                if start > cut and self._candidate is None:
                    self._candidate = self._scan
                continue
            if not line.startswith((" ", "\t")):
                # Text after a blank line that is not indented: the block before it is done
                # (indented text could still belong to a list item above).
                if self._candidate is not None:
                    cut = self._candidate
                if _HEADING.match(line):
                    cut = self._scan
            self._candidate = None
