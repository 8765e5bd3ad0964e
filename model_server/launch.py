"""Build the exact engine command for a profile, and exec it.

The launcher replaces itself with the engine (os.execvpe), so signals from a terminal,
compose or systemd reach the engine directly and its exit code is the container's.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from model_server import embedded, gpus, netif, requantize
from model_server.config import API_KEY_ENV, VLLM_BIN_ENV, ServeConfig
from model_server.errors import LauncherError
from model_server.profiles import PackageFile, Profile, sampling_json

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The embedded engine: llama.cpp's own server, run in-process by model_server/embedded.py
# through xllamacpp (a prebuilt wheel); it reads its key from this variable.
EMBEDDED_MODULE = "model_server.embedded"
ENGINE_PACKAGE = "xllamacpp"
LLAMA_CPP_API_KEY_ENV = embedded.API_KEY_ENV
# Slots when a llama.cpp profile does not say; 1 answers one request at a time.
DEFAULT_PARALLEL = 1
# MiB of RAM for the server's cache of finished prompts (a follow-up question reuses the
# conversation's prefix); llama.cpp's own default is 8 GiB.
LLAMA_PROMPT_CACHE_MIB = 256
# The address vLLM (and our NCCL/Gloo interface lookup) uses for this node.
HOST_IP_ENV = "VLLM_HOST_IP"
MASTER_ADDR_PLACEHOLDER = "<MASTER_ADDR>"


class LaunchError(LauncherError):
    """The engine or the model cannot be found or started."""


@dataclass(frozen=True)
class EngineCommand:
    argv: tuple[str, ...]
    # Added to the launcher's environment; the API key travels here, not in argv (ps).
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: frozenset[str] = frozenset()
    # Dry runs only: what would stop a real start (e.g. the model is not installed yet).
    warnings: tuple[str, ...] = ()
    # Dry runs only: how the command was derived (e.g. the data-parallel size from the GPUs).
    notes: tuple[str, ...] = ()

    def shell_line(self) -> str:
        return shlex.join(self.argv)

    def env_lines(self) -> list[str]:
        return [
            f"{k}={'<hidden>' if k in self.secret_env else shlex.quote(v)}"
            for k, v in sorted(self.env.items())
        ]


def _hint(profile: Profile) -> str:
    return f" ({profile.install_hint})" if profile.install_hint else ""


def package_file(spec: PackageFile) -> Path:
    """Locate a file inside an installed package without importing the package."""
    found = importlib.util.find_spec(spec.package)
    if found is None:
        raise LaunchError(f"model package {spec.package!r} is not installed")
    roots = list(found.submodule_search_locations or [])
    if not roots and found.origin:
        roots = [str(Path(found.origin).parent)]
    for root in roots:
        matches = sorted(
            glob.glob(os.path.join(glob.escape(root), "**", spec.pattern), recursive=True)
        )
        if matches:
            return Path(matches[0])
    raise LaunchError(f"model package {spec.package!r} has no file matching {spec.pattern!r}")


def _converted(source: Path, target: str, dry_run: bool) -> tuple[str, list[str]]:
    """The packaged model's copy in `target` (made on the first real start) and what to say."""
    found = requantize.cached(source, target)
    if found is not None:
        return str(found), []
    if dry_run:
        return str(source), [f"the model is served from a {target} copy, made on the first start"]
    print(
        f"mixvllm-serve: writing a {target} copy of {source.name}, once (llama.cpp answers "
        f"several requests together faster from {target})",
        file=sys.stderr,
        flush=True,
    )
    try:
        return str(requantize.ensure(source, target)), []
    except requantize.RequantizeError as exc:
        return str(source), [f"serving {source.name} as it is: no {target} copy ({exc})"]


def resolve_model(profile: Profile, cwd: Path) -> str:
    model = profile.model
    try:
        if isinstance(model, PackageFile):
            return str(package_file(model))
        if model.startswith(".models/"):
            # Fetched into the checkout by `make`: found from any directory (a copy in the
            # current one first).
            roots = (cwd, PROJECT_ROOT)
            path = next((r / model for r in roots if (r / model).exists()), PROJECT_ROOT / model)
            path = path.resolve()
            if not path.exists():
                raise LaunchError(f"model path {path} does not exist")
            return str(path)
        if model.startswith(("./", "../", "/", "~")):
            path = (cwd / Path(model).expanduser()).resolve()
            if not path.exists():
                raise LaunchError(f"model path {path} does not exist")
            return str(path)
    except LaunchError as exc:
        raise LaunchError(f"{exc}{_hint(profile)}") from exc
    return model


def vllm_binary(env: Mapping[str, str], cwd: Path) -> str:
    configured = env.get(VLLM_BIN_ENV, "").strip()
    if configured:
        return configured
    for root in (cwd, PROJECT_ROOT):
        candidate = root / ".venv-vllm" / "bin" / "vllm"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("vllm", path=env.get("PATH")) or "vllm"


def _vllm_argv(p: Profile, model: str, binary: str) -> list[str]:
    argv = [binary, "serve", model, "--served-model-name", p.served_model_name]
    argv += ["--host", p.host, "--port", str(p.port)]
    argv += ["--tensor-parallel-size", str(p.tensor_parallel_size)]
    argv += ["--pipeline-parallel-size", str(p.pipeline_parallel_size)]
    if p.distributed_executor_backend:
        argv += ["--distributed-executor-backend", p.distributed_executor_backend]
    if p.max_model_len:
        argv += ["--max-model-len", str(p.max_model_len)]
    if p.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{p.gpu_memory_utilization:g}"]
    if p.dtype:
        argv += ["--dtype", p.dtype]
    if p.quantization:
        argv += ["--quantization", p.quantization]
    if p.enable_prefix_caching:
        argv.append("--enable-prefix-caching")
    if p.reasoning_parser:
        argv += ["--reasoning-parser", p.reasoning_parser]
    if p.tool_call_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", p.tool_call_parser]
    if p.sampling:
        # Merged over the model's own generation_config.json (--generation-config auto).
        argv += ["--generation-config", "auto", "--override-generation-config", sampling_json(p)]
    return argv


def _node_argv(config: ServeConfig) -> list[str]:
    """vLLM's native multi-node flags: every node runs the same command but its rank."""
    p = config.profile
    if p.nnodes == 1:
        return []
    master = config.master_addr or MASTER_ADDR_PLACEHOLDER
    argv = ["--nnodes", str(p.nnodes), "--node-rank", str(config.node_rank)]
    argv += ["--master-addr", master]
    return [*argv, "--headless"] if config.headless else argv


def _node_env(config: ServeConfig, env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """VLLM_HOST_IP (node 0 defaults to MASTER_ADDR) and the interface that carries it."""
    host_ip = env.get(HOST_IP_ENV, "").strip()
    extra: dict[str, str] = {}
    if not host_ip and not config.headless and config.master_addr:
        host_ip = extra[HOST_IP_ENV] = config.master_addr
    if not host_ip:
        return extra, [f"{HOST_IP_ENV} is not set: NCCL and Gloo pick an interface themselves"]
    try:
        extra.update(netif.socket_ifname_env(host_ip, env))
    except netif.InterfaceError as exc:
        if not config.dry_run:
            raise LaunchError(f"{HOST_IP_ENV}={host_ip}: {exc}") from exc
        return extra, [str(exc)]
    return extra, []


def usable_cpus() -> int:
    """CPUs this process may run on (affinity, e.g. taskset or cpusets), not the host's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Profile sampling keys as the embedded engine's flags (llama-server's names; its per-request
# defaults).
_LLAMA_SAMPLING_FLAGS = {
    "temperature": "--temp",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "min_p": "--min-p",
    "repetition_penalty": "--repeat-penalty",
    "presence_penalty": "--presence-penalty",
    "frequency_penalty": "--frequency-penalty",
    "max_new_tokens": "--n-predict",
}


def _llama_cpp_argv(p: Profile, model: str, python: str) -> list[str]:
    # Every usable CPU decodes and reads prompts (llama-cpp-python's policy before it). On a
    # quiet 2-core box 2 threads gave one answer 105 tokens/s and four together 141; 1 thread
    # 73 and 144. OpenMP's threads spin at llama.cpp's barriers (its default): sleeping
    # instead (OMP_WAIT_POLICY=PASSIVE) cut one answer to 37 tokens/s there, and only helps
    # a box that is busy with other work (docs/troubleshooting.md).
    threads = p.threads or usable_cpus()
    slots = p.parallel or DEFAULT_PARALLEL
    argv = [python, "-m", EMBEDDED_MODULE, "--model", model, "--alias", p.served_model_name]
    argv += ["--host", p.host, "--port", str(p.port)]
    argv += ["--threads", str(threads), "--threads-batch", str(threads)]
    # Continuous batching over `slots` answers; the context is split evenly between slots.
    argv += ["--parallel", str(slots)]
    if p.max_model_len:
        argv += ["--ctx-size", str(p.max_model_len * slots)]
    argv += ["--cache-ram", str(LLAMA_PROMPT_CACHE_MIB)]
    for key, value in sorted(p.sampling.items()):
        argv += [_LLAMA_SAMPLING_FLAGS[key], f"{value:g}"]
    return argv


def build_command(
    config: ServeConfig, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> EngineCommand:
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    p = config.profile
    warnings: list[str] = []
    notes: list[str] = []
    try:
        model = resolve_model(p, cwd)
    except LaunchError as exc:
        if not config.dry_run:
            raise
        model = f"<{p.model}>"
        warnings.append(str(exc))
    else:
        if isinstance(p.model, PackageFile) and p.model.convert_to:
            model, said = _converted(Path(model), p.model.convert_to, config.dry_run)
            (notes if config.dry_run else warnings).extend(said)
    extra_env = dict(p.env)
    if p.engine == "vllm":
        argv = _vllm_argv(p, model, vllm_binary(env, cwd)) + _node_argv(config)
        dp = gpus.plan(
            p.data_parallel_size, p.tensor_parallel_size * p.pipeline_parallel_size,
            gpus.visible_gpus(env),
        )  # fmt: skip
        if dp.size > 1:
            argv += ["--data-parallel-size", str(dp.size)]
        notes += [f"data parallel: {dp.note}"] if dp.note else []
        warnings += [dp.warning] if dp.warning else []
        key_env = API_KEY_ENV
        if p.nnodes > 1:
            node_env, node_warnings = _node_env(config, env)
            extra_env.update(node_env)
            warnings += node_warnings
            if not config.master_addr:
                warnings.append("MASTER_ADDR is not set: every node needs node 0's address")
    else:
        argv = _llama_cpp_argv(p, model, sys.executable)
        key_env = LLAMA_CPP_API_KEY_ENV
    argv += [*p.extra_args, *config.extra_args]
    secret: frozenset[str] = frozenset()
    if config.api_key:
        extra_env[key_env] = config.api_key
        secret = frozenset({key_env})
    return EngineCommand(
        argv=tuple(argv), env=extra_env, secret_env=secret, warnings=tuple(warnings),
        notes=tuple(notes),
    )  # fmt: skip


def check_engine(config: ServeConfig, command: EngineCommand) -> None:
    """Fail early, with the install hint, when the engine is not installed."""
    p = config.profile
    if p.engine == "llama.cpp":
        # Checked by name: importing it would load llama.cpp into the launcher.
        if importlib.util.find_spec(ENGINE_PACKAGE) is None:
            raise LaunchError(f"llama.cpp's server ({ENGINE_PACKAGE}) is not installed{_hint(p)}")
        return
    binary = command.argv[0]
    found = shutil.which(binary) if os.sep not in binary else binary
    if found and os.access(found, os.X_OK):
        return
    raise LaunchError(
        f"vLLM not found ({binary!r}; set {VLLM_BIN_ENV} or put vllm on PATH){_hint(p)}"
    )


def exec_engine(command: EngineCommand) -> NoReturn:
    env = {**os.environ, **command.env}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command.argv[0], list(command.argv), env)  # noqa: S606
    except OSError as exc:
        raise LaunchError(f"cannot start {command.argv[0]}: {exc.strerror or exc}") from exc
