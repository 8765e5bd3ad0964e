"""What the server says about the model's context: its length, and a text's tokens.

vLLM puts `max_model_len` on each model of /v1/models. llama.cpp's llama-server puts the
model's training context in `meta.n_ctx_train` there, and the context it really runs with
(often smaller, per slot) in /props. llama-cpp-python's server tells neither: None, and chat
falls back to its `context_length` setting. Counting asks the server's tokenizer: /tokenize
(vLLM, llama-server, each with its own field) or /extras/tokenize/count (llama-cpp-python).

Every answer that is not what was expected (an error, a timeout, another shape) is None:
the context is then shown as unknown, and nothing else changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chat_cli.api.transport import Timeout, TransportError, headers
from mixvllm_common.http_client import request

LOOKUP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Reported:
    """The server's figures: `exact` the context it runs with, `trained` the model's own."""

    exact: int | None = None
    trained: int | None = None


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def root(base_url: str) -> str:
    """The server's own address: llama.cpp's and vLLM's extra endpoints are not under /v1."""
    return base_url.rstrip("/").removesuffix("/v1")


def _get_json(url: str, api_key: str | None, body: object = None) -> Any:
    try:
        status, data = request(
            url, timeout=LOOKUP_TIMEOUT_S, headers=headers(api_key, False), body=body
        )
    except (*TransportError, Timeout):
        return None
    if status != 200:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def reported(base_url: str, api_key: str | None, model: str) -> Reported:
    """The context length `model` runs with, as the server reports it."""
    listing = _get_json(base_url.rstrip("/") + "/models", api_key)
    items = listing.get("data") if isinstance(listing, dict) else None
    item = next((i for i in items or () if isinstance(i, dict) and i.get("id") == model), None)
    if item is None:
        return Reported()
    exact = _positive(item.get("max_model_len"))
    if exact is not None:
        return Reported(exact=exact)
    meta = item.get("meta")
    if not isinstance(meta, dict) or "n_ctx_train" not in meta:
        return Reported()
    # llama-server: only its /props knows the context it was started with.
    props = _get_json(root(base_url) + "/props", api_key)
    if isinstance(props, dict):
        settings = props.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else props.get("n_ctx")
        exact = _positive(n_ctx)
    return Reported(exact=exact, trained=_positive(meta.get("n_ctx_train")))


class Tokenizer:
    """The server's tokenizer, through the first endpoint that answers; once one has, only
    it is asked, and once none has, none is asked again."""

    # (path, the field that holds the text): vLLM, llama-server, llama-cpp-python.
    VARIANTS = (("/tokenize", "prompt"), ("/tokenize", "content"),
                ("/extras/tokenize/count", "input"))  # fmt: skip

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.root = root(base_url)
        self.api_key = api_key
        self._untried = list(self.VARIANTS)
        self._found: tuple[str, str] | None = None

    def count(self, model: str, text: str) -> int | None:
        """`text`'s tokens, without the special ones; None when no endpoint answers."""
        if self._found is not None:
            return self._ask(self._found, model, text)
        while self._untried:
            variant = self._untried.pop(0)
            counted = self._ask(variant, model, text)
            # llama-server answers vLLM's field with no tokens at all: not its variant.
            if counted is not None and (counted > 0 or not text.strip()):
                self._found = variant
                return counted
        return None

    def _ask(self, variant: tuple[str, str], model: str, text: str) -> int | None:
        path, field = variant
        body = {"model": model, field: text, "add_special_tokens": False}
        data = _get_json(self.root + path, self.api_key, body)
        if not isinstance(data, dict):
            return None
        count = data.get("count")
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            return count
        tokens = data.get("tokens")
        return len(tokens) if isinstance(tokens, list) else None
