"""llama-server's `/props` as a team session sees it: the context each slot holds, no more.

The whole answer also names the model file's path on the server, its build, its chat template
and every default sampling setting; chat reads only `default_generation_settings.n_ctx`
(chat_cli/api/context.py), so that is what passes. The answer is held until it is whole
(a few KiB; bounded) and replaced by that one field.
"""

from __future__ import annotations

import json
from typing import Any

MAX_PROPS_BYTES = 1 << 20


class PropsFilter:
    """Fed the model server's answer; `flush` gives what the session gets."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        if self._size <= MAX_PROPS_BYTES:
            self._parts.append(chunk)
            self._size += len(chunk)
        return b""

    def flush(self, *, whole: bool = True) -> bytes:
        n_ctx = _n_ctx(b"".join(self._parts)) if whole and self._size <= MAX_PROPS_BYTES else None
        self._parts.clear()
        settings = {} if n_ctx is None else {"n_ctx": n_ctx}
        return json.dumps({"default_generation_settings": settings}).encode()

    def used(self) -> tuple[int, int]:
        return 0, 0


def _n_ctx(body: bytes) -> int | None:
    try:
        props: Any = json.loads(body)
    except ValueError:
        return None
    settings = props.get("default_generation_settings") if isinstance(props, dict) else None
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    return n_ctx if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0 else None
