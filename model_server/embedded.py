"""The embedded engine: llama.cpp's own C++ server, run in this process through xllamacpp.

`python -m model_server.embedded --model F.gguf --port N --parallel 4 ...` serves the
OpenAI API (/v1/chat/completions, /v1/models, /health) from llama.cpp's server: continuous
batching over `--parallel` slots, so several tabs are answered together. xllamacpp ships it
prebuilt (a manylinux wheel), so installing the engine compiles nothing.

The flags keep llama-server's names, so a profile's `extra_args` read like its manual; only
these are known (anything else is refused with one line). The API key comes from
LLAMA_API_KEY, never argv (ps shows argv to every user). The process serves until SIGTERM,
SIGINT or SIGHUP; the handlers only set an event, the main thread stops the server.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

API_KEY_ENV = "LLAMA_API_KEY"
PROG = "mixvllm-embedded"

# llama-server's sampling flags -> xllamacpp's CommonParamsSampling attributes.
SAMPLING_FLAGS = {
    "--temp": ("temp", float),
    "--top-p": ("top_p", float),
    "--top-k": ("top_k", int),
    "--min-p": ("min_p", float),
    "--repeat-penalty": ("penalty_repeat", float),
    "--presence-penalty": ("penalty_present", float),
    "--frequency-penalty": ("penalty_freq", float),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        # One line, no usage block: the launcher's log shows it as the engine's last words.
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", required=True, type=Path, help="the GGUF file")
    ap.add_argument("--alias", required=True, help="the model name clients send")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=-1, help="decode threads (-1: llama.cpp's)")
    ap.add_argument("--threads-batch", type=int, default=-1, help="prompt threads")
    ap.add_argument("--parallel", type=int, default=1, help="answers decoded together")
    ap.add_argument("--ctx-size", type=int, default=0, help="tokens of context, all slots")
    ap.add_argument("--n-predict", type=int, default=-1, help="default answer length cap")
    ap.add_argument("--cache-ram", type=int, default=256, help="MiB for cached prompts")
    ap.add_argument("--chat-template-file", type=Path, help="jinja chat template")
    for flag, (_, kind) in SAMPLING_FLAGS.items():
        ap.add_argument(flag, type=kind)
    return ap


def build_params(ns: argparse.Namespace, env: Mapping[str, str]) -> Any:
    """xllamacpp's CommonParams for the parsed flags (imported here: --help stays cheap)."""
    import xllamacpp  # noqa: PLC0415

    p = xllamacpp.CommonParams()
    p.model.path = str(ns.model)
    p.model_alias = {ns.alias}
    p.hostnames = [ns.host]
    p.port = ns.port
    p.n_parallel = ns.parallel
    p.cont_batching = True
    p.n_ctx = ns.ctx_size
    p.n_predict = ns.n_predict
    p.cpuparams.n_threads = ns.threads
    p.cpuparams_batch.n_threads = ns.threads_batch
    p.cache_ram_mib = ns.cache_ram
    p.use_jinja = True
    if ns.chat_template_file is not None:
        p.chat_template = ns.chat_template_file.read_text(encoding="utf-8")
    # /slots shows every user's prompt to anyone with the key; the web UI is not ours.
    p.endpoint_slots = False
    p.ui = False
    key = env.get(API_KEY_ENV, "")
    if key:
        p.api_keys = [key]
    for flag, (attr, _) in SAMPLING_FLAGS.items():
        value = getattr(ns, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            setattr(p.sampling, attr, value)
    return p


def _stop_on_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())


def main(argv: Sequence[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    if not ns.model.is_file():
        print(f"{PROG}: error: model file {ns.model} does not exist", file=sys.stderr)
        return 2
    if ns.chat_template_file is not None and not ns.chat_template_file.is_file():
        print(f"{PROG}: error: no chat template {ns.chat_template_file}", file=sys.stderr)
        return 2
    stop = threading.Event()
    _stop_on_signals(stop)
    import xllamacpp  # noqa: PLC0415

    try:
        server = xllamacpp.Server(build_params(ns, os.environ))
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"{PROG}: error: the server did not start: {exc}", file=sys.stderr)
        return 1
    print(f"{PROG}: serving {ns.alias} at {server.listening_address}", flush=True)
    while not stop.wait(3600):
        pass
    # llama.cpp's server threads hold the model; the C++ destructor joins them.
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
