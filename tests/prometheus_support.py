"""Prometheus's own `promtool` (Debian's `prometheus` package, `make system-packages`) and a
reader for the text exposition format the scrape targets serve."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import require

Sample = tuple[str, tuple[tuple[str, str], ...]]
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def promtool(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    """Run promtool; its output, or the test fails with it."""
    path = shutil.which("promtool")
    require(path is not None, "promtool is not installed (make system-packages)")
    assert path is not None
    done = subprocess.run([path, *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def samples(text: str) -> dict[Sample, float]:
    """Every sample, keyed by name and sorted labels."""
    out: dict[Sample, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, f"not a sample line: {line!r}"
        labels = tuple(sorted(_LABEL.findall(match[2] or "")))
        out[(match[1], labels)] = float(match[3])
    return out
