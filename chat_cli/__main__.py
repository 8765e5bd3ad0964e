"""`chat`: the CLI edge. Domain errors become one line and an exit code here, nowhere else."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from chat_cli.config import load_config
from chat_cli.errors import EXIT_INTERRUPTED, ChatError


def _end_on_signals() -> None:
    """SIGTERM and SIGHUP (the terminal closed) end chat through its `finally` blocks, as
    Ctrl-C does, so that the MCP servers it started end with it; their default action would
    end chat on the spot and leave the servers running. A signal chat's parent ignored
    (nohup) stays ignored."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for each in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(each, signal.SIG_IGN)  # one ending at a time: let it finish
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, stop)


def main(argv: Sequence[str] | None = None) -> int:
    if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
        _end_on_signals()
    try:
        config = load_config(sys.argv[1:] if argv is None else argv)
    except ChatError as err:
        print(f"chat: {err}", file=sys.stderr)
        return err.exit_code
    try:
        from chat_cli.cli import run  # noqa: PLC0415 (start-up: --help and bad flags skip it)

        return run(config)
    except ChatError as err:
        if config.debug:
            import traceback  # noqa: PLC0415 (only with --debug: 20 ms of imports)

            traceback.print_exc()
        sys.stdout.flush()
        print(f"chat: {err.one_shot()}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("chat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `chat ... | head`: the reader went away, which is not our failure. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        if config.debug:
            raise
        print(
            f"chat: internal error: {type(err).__name__}: {err} (run with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
