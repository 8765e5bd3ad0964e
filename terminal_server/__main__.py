"""`mixvllm-terminal` / `python -m terminal_server`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from .app import StartupError, serve
from .config import ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"mixvllm-terminal: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(serve(config))
    except StartupError as exc:
        print(f"mixvllm-terminal: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
