"""`chat`: the CLI edge. Domain errors become one line and an exit code here, nowhere else."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from chat_cli.config import load_config
from chat_cli.errors import EXIT_INTERRUPTED, ChatError
from mixvllm_common.terminal_text import visible


@contextlib.contextmanager
def _ended_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (the terminal closed) end chat through its `finally` blocks, as
    Ctrl-C does, so that the MCP servers it started end with it; their default action would
    end chat on the spot and leave the servers running. A signal chat's parent ignored
    (nohup) stays ignored."""
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield
        return
    endings = (signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.getsignal(signum) for signum in endings}

    def stop(signum: int, frame: FrameType | None) -> None:
        for each in endings:
            signal.signal(each, signal.SIG_IGN)  # one ending at a time: let it finish
        raise SystemExit(128 + signum)

    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    with _ended_by_signals():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["logs"] and (logs := _logs_command(args)) is not None:
        return _logs(logs, args[1:])
    return _chat(args)


def _chat(args: list[str]) -> int:
    try:
        config = load_config(args)
    except ChatError as err:
        print(f"chat: {visible(str(err))}", file=sys.stderr)
        return err.exit_code
    try:
        from chat_cli.cli import run  # noqa: PLC0415 (start-up: --help and bad flags skip it)

        return run(config)
    except ChatError as err:
        if config.debug:
            import traceback  # noqa: PLC0415 (only with --debug: 20 ms of imports)

            sys.stderr.write(visible(traceback.format_exc()))  # it quotes the error's text
        sys.stdout.flush()
        # Errors quote servers, tools and files: their controls are shown, not run.
        print(f"chat: {visible(err.one_shot())}", file=sys.stderr)
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
            f"chat: internal error: {type(err).__name__}: {visible(str(err))} "
            "(run with --debug for details)",
            file=sys.stderr,
        )
        return 1


def _logs_command(args: list[str]) -> Callable[[list[str]], int] | None:
    from chat_cli.history import logs  # noqa: PLC0415 (only for `chat logs`)

    return logs.main if logs.is_logs_command(args) else None


def _logs(command: Callable[[list[str]], int], args: list[str]) -> int:
    try:
        return command(args)
    except ChatError as err:
        print(f"chat: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
