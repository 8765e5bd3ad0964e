"""`mixvllm-serve`: launch a model profile, wait for a server, or run everything (`up`).

mixvllm-serve [serve] [--profile NAME] [overrides] [--dry-run | --list] [-- ENGINE ARGS]
mixvllm-serve wait URL [--timeout S]
mixvllm-serve health URL
mixvllm-serve up [--profile NAME] [--model-port P] [--terminal-port P]
mixvllm-serve key
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from mixvllm_common.defaults import VLLM_API_KEY_ENV
from mixvllm_common.state import read_api_key, state_dir
from mixvllm_common.urls import server_root
from model_server import health
from model_server.errors import LauncherError

PROG = "mixvllm-serve"
COMMANDS = ("serve", "wait", "health", "up", "key")
# Commands that need no profile: their parser and run skip the profile machinery (pydantic,
# YAML), so a container health check every few seconds stays cheap.
LIGHT_COMMANDS = ("wait", "health")


def build_parser(light: bool = False) -> argparse.ArgumentParser:
    """The whole command line; `light`: only the LIGHT_COMMANDS."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Model server launcher: vLLM profiles, the embedded llama.cpp default, "
        "readiness waiting, and `up` (model server + browser terminal).",
        epilog="Without a command, `serve` is meant: `mixvllm-serve --profile qwen2-7b-instruct "
        "--dry-run`, `mixvllm-serve --list`. See `mixvllm-serve serve --help` for its flags.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,wait,health,up,key}")

    if not light:
        from model_server import config  # noqa: PLC0415 (imports the profiles)

        serve = sub.add_parser(
            "serve",
            help="exec the engine for a profile (the default command)",
            description="Exec the profile's engine; flags override env vars, which override "
            "the profile. Arguments after `--` go to the engine unchanged.",
        )
        config.add_serve_flags(serve)

    wait = sub.add_parser(
        "wait",
        help="wait until a model server is ready",
        description="Poll URL/health (vLLM) or URL/v1/models (llama.cpp) until it answers. "
        f"Uses ${VLLM_API_KEY_ENV} (or the local key) for /v1/models.",
    )
    wait.add_argument("url", help="server URL, with or without /v1")
    wait.add_argument("--timeout", type=float, default=600.0, help="seconds (default: 600)")
    wait.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    wait.add_argument("--quiet", action="store_true", help="no progress lines")

    health_parser = sub.add_parser(
        "health",
        help="a container health check: ready or still loading, versus broken",
        description="Exit 0 when the server at URL is ready, or does not answer yet because "
        "it is still downloading or loading its model; exit 1 when it answers with an error, "
        "or stopped answering after it was ready. Prints one line saying which.",
    )
    health_parser.add_argument("url", help="server URL, with or without /v1")
    health_parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    if light:
        return parser

    from model_server import up  # noqa: PLC0415 (imports the profiles)

    up_parser = sub.add_parser(
        "up",
        help="run the model server and the browser terminal together",
        description="Start the model server, wait until it answers a chat completion, start "
        "mixvllm-terminal pointed at it, print the URL with the token; Ctrl-C stops both.",
    )
    up.add_flags(up_parser)

    sub.add_parser(
        "key",
        help="print the model server's API key",
        description=f"Print ${VLLM_API_KEY_ENV}, else the local key "
        "(generated on first use), e.g. export VLLM_API_KEY=$(mixvllm-serve key).",
    )
    return parser


def _split_engine_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def list_profiles() -> str:
    from model_server import profiles  # noqa: PLC0415 (slow import, only for serve)

    rows = [("NAME", "ENGINE", "MODEL", "TPxPP", "DESCRIPTION")]
    for name in profiles.available():
        p = profiles.load(name)
        marker = " (default)" if name == profiles.DEFAULT_PROFILE else ""
        parallel = f"{p.tensor_parallel_size}x{p.pipeline_parallel_size}"
        rows.append((name + marker, p.engine, str(p.model), parallel, p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    )


def serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from model_server import config, launch, up  # noqa: PLC0415 (slow imports, only here)

    if args.list:
        print(list_profiles())
        return 0
    cfg = config.build(args, env)
    command = launch.build_command(cfg, env=env)
    if cfg.dry_run:
        for warning in command.warnings:
            print(f"# warning: {warning}", file=sys.stderr)
        for note in command.notes:
            print(f"# {note}", file=sys.stderr)
        for line in command.env_lines():
            print(f"# env: {line}", file=sys.stderr)
        print(command.shell_line())
        return 0
    launch.check_engine(cfg, command)
    for warning in command.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    p = cfg.profile
    if cfg.headless:
        print(
            f"{PROG}: profile {p.name!r}: node {cfg.node_rank} of {p.nnodes} joining "
            f"{cfg.master_addr} (headless: node 0 serves the API)",
            file=sys.stderr,
        )
        launch.exec_engine(command)
    # One clear line instead of the engine's traceback after a long model load.
    up.check_port_free(p.host, p.port, "model server")
    print(
        f"{PROG}: profile {p.name!r}: {p.engine} serving {p.served_model_name!r} on "
        f"http://{p.host}:{p.port}/v1 (API key from {cfg.api_key_source})",
        file=sys.stderr,
    )
    launch.exec_engine(command)


def known_api_key(env: Mapping[str, str]) -> str | None:
    """$VLLM_API_KEY, else the local key if there is one (never made here)."""
    return env.get(VLLM_API_KEY_ENV, "").strip() or read_api_key(env)


def wait(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    key = known_api_key(env)

    def progress(line: str) -> None:
        print(f"{PROG} wait: {line}", file=sys.stderr, flush=True)

    took = health.wait(
        args.url,
        timeout=args.timeout,
        api_key=key,
        interval=args.interval,
        progress=None if args.quiet else progress,
    )
    if not args.quiet:
        progress(f"{server_root(args.url)} is ready after {took:.1f}s")
    return 0


def health_check(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    key = known_api_key(env)
    marker = state_dir(env) / "health-ready"
    result = health.container_health(args.url, api_key=key, marker=marker, timeout=args.timeout)
    print(result.detail)
    return 0 if result.healthy else 1


def print_key(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from model_server import config  # noqa: PLC0415 (slow import, only here)

    print(config.resolve_api_key(env)[0])
    return 0


def run_up(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from model_server import up  # noqa: PLC0415 (slow import, only here)

    return up.run(up.build(args, env), env)


COMMAND_RUNNERS: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
    "serve": serve,
    "wait": wait,
    "health": health_check,
    "up": run_up,
    "key": print_key,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, engine_args = _split_engine_args(argv)
    if not own or own[0] not in (*COMMANDS, "-h", "--help"):
        own.insert(0, "serve")
    parser = build_parser(light=own[0] in LIGHT_COMMANDS)
    args = parser.parse_args(own)
    args.engine_args = engine_args
    if engine_args and args.command != "serve":
        parser.error("arguments after `--` are only for `serve`")
    env = os.environ
    try:
        return COMMAND_RUNNERS[args.command or "serve"](args, env)
    except LauncherError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
