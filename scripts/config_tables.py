"""Regenerate docs/configuration.md's tables from the programs' option tables.

    python scripts/config_tables.py

Each table sits between `<!-- options: NAME -->` and `<!-- /options -->`; tests/test_docs.py
fails while docs/configuration.md differs from what this writes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGURATION = ROOT / "docs" / "configuration.md"
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it

from chat_cli import config as chat_config  # noqa: E402
from mixvllm_common.options import Option, markdown_table  # noqa: E402
from model_server import config as serve_config  # noqa: E402
from model_server import up  # noqa: E402
from terminal_server import config as terminal_config  # noqa: E402

TABLES: dict[str, Sequence[Option]] = {
    "mixvllm-terminal": terminal_config.OPTIONS,
    "chat": chat_config.DOCUMENTED,
    "mixvllm-serve": serve_config.SERVE_OPTIONS,
    "mixvllm-serve up": up.OPTIONS,
}
_REGION = re.compile(r"(<!-- options: (?P<name>[^>]+?) -->\n)(.*?)(<!-- /options -->)", re.S)


def render(text: str) -> str:
    """`text` with every table region rewritten; an unknown name raises KeyError."""
    return _REGION.sub(
        lambda m: f"{m.group(1)}\n{markdown_table(TABLES[m.group('name')])}\n{m.group(4)}",
        text,
    )


def main() -> int:
    text = CONFIGURATION.read_text(encoding="utf-8")
    fresh = render(text)
    if fresh != text:
        CONFIGURATION.write_text(fresh, encoding="utf-8")
        print(f"updated {CONFIGURATION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
