"""Names the programs share (mixvllm_common.names) are written out only there."""

from __future__ import annotations

import ast
from pathlib import Path

from mixvllm_common import names

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chat_cli", "terminal_server", "model_server", "mixvllm_common")
SHARED = {
    names.SESSION_ENV,
    names.EXPORT_ENV,
    names.EXPORT_JSON,
    names.EXPORT_MARKDOWN,
    names.PAGE_OSC,
}


def test_shared_names_are_spelled_out_in_one_module() -> None:
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "mixvllm_common" / "names.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                value = node.value if isinstance(node, ast.Constant) else None
                if not isinstance(value, bool) and value in SHARED:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {value!r}")
    assert found == []
