"""Show the phases and compile progress of a `pip install -v` build; log all of its output.

Usage: pip install -v ... 2>&1 | python scripts/build_progress.py LOG [PREFIX]

Minutes of silence read as a hang, and pip's own output is either that silence (--quiet) or
thousands of compiler lines (-v). On a terminal the compile progress is one line rewritten in
place; in a pipe or a CI log it is one line per tenth of the build.
"""

from __future__ import annotations

import re
import sys
import time
from typing import TextIO

STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]")
SDIST = re.compile(r"Downloading (\S+\.tar\.gz) \((.+)\)")
WHEEL_BUILT = re.compile(r"Created wheel for (\S+?):")
PHASES = (
    ("Installing build dependencies: started", "installing build tools"),
    ("-- The C compiler identification", "configuring (cmake)"),
)


class Progress:
    def __init__(self, out: TextIO, prefix: str, *, tty: bool) -> None:
        self.out = out
        self.prefix = prefix
        self.tty = tty
        self.start = time.monotonic()
        self.last_tenth = -1
        self.open_line = False

    def elapsed(self) -> int:
        return round(time.monotonic() - self.start)

    def say(self, text: str) -> None:
        if self.open_line:
            self.out.write("\n")
            self.open_line = False
        self.out.write(f"{self.prefix}{text}\n")
        self.out.flush()

    def step(self, done: int, total: int) -> None:
        text = f"compiling {done * 100 // total}% ({done}/{total}, {self.elapsed()} s)"
        if self.tty:
            self.out.write(f"\r{self.prefix}{text} ")
            self.out.flush()
            self.open_line = True
        elif done * 10 // total != self.last_tenth:
            self.say(text)
        self.last_tenth = done * 10 // total

    def feed(self, line: str) -> None:
        if m := STEP.match(line):
            self.step(int(m[1]), int(m[2]))
        elif m := SDIST.search(line):
            self.say(f"downloading {m[1]} ({m[2]})")
        elif m := WHEEL_BUILT.search(line):
            self.say(f"built the {m[1]} wheel in {self.elapsed()} s")
        else:
            for marker, text in PHASES:
                if marker in line:
                    self.say(text)

    def close(self) -> None:
        if self.open_line:
            self.out.write("\n")
            self.out.flush()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    prefix = argv[2] if len(argv) == 3 else "build: "
    sys.stdin.reconfigure(errors="replace")  # type: ignore[union-attr]
    progress = Progress(sys.stdout, prefix, tty=sys.stdout.isatty())
    with open(argv[1], "a", encoding="utf-8", errors="replace") as log:
        for line in sys.stdin:
            log.write(line)
            progress.feed(line)
    progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
