"""Shared test helpers.

Under `make test` (MIXVLLM_REQUIRE_ALL=1) a missing real part (Chromium, the embedded
engine, vLLM's CPU build) fails the test instead of skipping it, so CI never goes green
by silently skipping the real-engine or browser tests.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL = os.environ.get("MIXVLLM_REQUIRE_ALL") == "1"


def require(available: bool, reason: str) -> None:
    """Skip (locally) or fail (under `make test`) when a real part is missing."""
    if available:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required for the full suite but missing: {reason}", pytrace=False)
    pytest.skip(reason)
