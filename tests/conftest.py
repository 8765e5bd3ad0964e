"""Shared test helpers.

Under `make test` (MIXVLLM_REQUIRE_ALL=1) a missing real part (Chromium, the embedded
engine, vLLM's CPU build) fails the test instead of skipping it, so CI never goes green
by silently skipping the real-engine or browser tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.embedded_server import EmbeddedServer, run_embedded
from tests.embedded_server import installed as embedded_installed

REQUIRE_ALL = os.environ.get("MIXVLLM_REQUIRE_ALL") == "1"


def require(available: bool, reason: str) -> None:
    """Skip (locally) or fail (under `make test`) when a real part is missing."""
    if available:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required for the full suite but missing: {reason}", pytrace=False)
    pytest.skip(reason)


# --- the real embedded model server (owned by the model-server part) ---------------------


@pytest.fixture(scope="session")
def embedded_model_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmbeddedServer]:
    """llama.cpp + SmolLM2 started once per session on a free port with a generated key.

    Yields an object with `.base_url` (http://127.0.0.1:PORT/v1), `.api_key` and `.model`.
    """
    ok, why = embedded_installed()
    require(ok, why)
    with run_embedded(tmp_path_factory.mktemp("embedded-model-server")) as server:
        yield server
