"""Model profiles: the YAML files in `model_server/profiles/`, validated on load.

A profile names an engine and everything that engine needs to serve one model. Every
validation error names the file and the field, so a typo in a profile is one clear line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Engine = Literal["vllm", "llama.cpp"]
ENGINES: tuple[Engine, ...] = ("vllm", "llama.cpp")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
PROFILES_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "embedded"


class ProfileError(Exception):
    """A profile is missing, unreadable or invalid."""


@dataclass(frozen=True)
class PackageFile:
    """A model file shipped inside an installed Python package (located, never imported)."""

    package: str
    pattern: str

    def __str__(self) -> str:
        return f"{self.package}:{self.pattern}"


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    engine: Engine
    model: str | PackageFile
    served_model_name: str
    description: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    dtype: str | None = None
    quantization: str | None = None
    enable_prefix_caching: bool = False
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    distributed_executor_backend: str | None = None
    # llama.cpp only: CPU threads; None means all of them.
    threads: int | None = None
    # vLLM only: default sampling, passed as --override-generation-config.
    sampling: Mapping[str, float | int] = field(default_factory=dict)
    # Extra environment for the engine process (e.g. VLLM_CPU_KVCACHE_SPACE).
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    # Printed when the engine or the model is missing.
    install_hint: str = ""


SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "max_new_tokens",
)


class _Fields:
    """Pops and type-checks the fields of one profile mapping."""

    def __init__(self, path: Path, data: Mapping[str, Any]) -> None:
        self.path = path
        self.data = dict(data)

    def fail(self, key: str, message: str) -> ProfileError:
        return ProfileError(f"{self.path}: field '{key}': {message}")

    def _pop(self, key: str, required: bool) -> Any:
        if key not in self.data:
            if required:
                raise self.fail(key, "is required")
            return None
        return self.data.pop(key)

    def str_(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self._pop(key, required)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def int_(
        self, key: str, *, default: int | None = None, minimum: int = 1, maximum: int | None = None
    ) -> int | None:
        value = self._pop(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self.fail(key, f"must be {bound}, got {value}")
        return value

    def float_(self, key: str, *, low: float, high: float) -> float | None:
        value = self._pop(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, got {value!r}")
        if not low < value <= high:
            raise self.fail(key, f"must be in ({low}, {high}], got {value}")
        return float(value)

    def bool_(self, key: str, *, default: bool) -> bool:
        value = self._pop(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._pop(key, False)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise self.fail(key, f"must be a mapping, got {value!r}")
        return value

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._pop(key, False)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"must be a list of strings, got {value!r}")
        return tuple(value)

    def rest(self) -> list[str]:
        return sorted(self.data)


def _model(f: _Fields) -> str | PackageFile:
    raw = f._pop("model", True)
    if isinstance(raw, str) and raw.strip():
        return raw
    if isinstance(raw, dict) and set(raw) == {"package", "file"}:
        package, pattern = raw["package"], raw["file"]
        if isinstance(package, str) and isinstance(pattern, str) and package and pattern:
            return PackageFile(package, pattern)
    raise f.fail(
        "model",
        f"must be a model id or path, or a mapping {{package: NAME, file: GLOB}}, got {raw!r}",
    )


def _sampling(f: _Fields) -> dict[str, float | int]:
    raw = f.mapping("sampling")
    out: dict[str, float | int] = {}
    for key, value in raw.items():
        if key not in SAMPLING_KEYS:
            raise f.fail(f"sampling.{key}", f"unknown; expected one of {', '.join(SAMPLING_KEYS)}")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise f.fail(f"sampling.{key}", f"must be a number, got {value!r}")
        out[key] = value
    return out


def parse_profile(path: Path, data: object) -> Profile:
    """Build a Profile from the parsed YAML of `path`; raise ProfileError naming the field."""
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: must be a YAML mapping of fields, got {type(data).__name__}")
    f = _Fields(path, data)
    name = f.str_("name", default=path.stem)
    assert name is not None
    if name != path.stem:
        raise f.fail("name", f"must match the file name '{path.stem}', got {name!r}")
    engine = f.str_("engine", required=True)
    if engine not in ENGINES:
        raise f.fail("engine", f"must be one of {', '.join(ENGINES)}, got {engine!r}")
    model = _model(f)
    served = f.str_("served_model_name", required=True)
    assert served is not None
    dtype = f.str_("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise f.fail("dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    env = f.mapping("env")
    for key, value in env.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise f.fail(f"env.{key}", f"must be a string or number, got {value!r}")
    profile = Profile(
        name=name,
        path=path,
        engine=engine,  # checked against ENGINES above
        model=model,
        served_model_name=served,
        description=f.str_("description", default="") or "",
        host=f.str_("host", default="127.0.0.1") or "127.0.0.1",
        port=f.int_("port", default=8000, maximum=65535) or 8000,
        max_model_len=f.int_("max_model_len", minimum=16),
        tensor_parallel_size=f.int_("tensor_parallel_size", default=1) or 1,
        pipeline_parallel_size=f.int_("pipeline_parallel_size", default=1) or 1,
        gpu_memory_utilization=f.float_("gpu_memory_utilization", low=0.0, high=1.0),
        dtype=dtype,
        quantization=f.str_("quantization"),
        enable_prefix_caching=f.bool_("enable_prefix_caching", default=False),
        reasoning_parser=f.str_("reasoning_parser"),
        tool_call_parser=f.str_("tool_call_parser"),
        distributed_executor_backend=f.str_("distributed_executor_backend"),
        threads=f.int_("threads"),
        sampling=_sampling(f),
        env={k: str(v) for k, v in env.items()},
        extra_args=f.str_list("extra_args"),
        install_hint=f.str_("install_hint", default="") or "",
    )
    unknown = f.rest()
    if unknown:
        raise f.fail(unknown[0], "unknown field")
    return checked(profile)


# Fields that only one engine understands; setting them for the other is a mistake.
_VLLM_ONLY = (
    "gpu_memory_utilization",
    "dtype",
    "quantization",
    "reasoning_parser",
    "tool_call_parser",
    "distributed_executor_backend",
    "sampling",
)


def checked(p: Profile) -> Profile:
    """Return `p` if its fields suit its engine (also re-run after overrides)."""

    def fail(key: str, message: str) -> ProfileError:
        return ProfileError(f"{p.path}: field '{key}': {message}")

    if p.engine == "llama.cpp":
        for key in _VLLM_ONLY:
            if getattr(p, key):
                raise fail(key, "is a vLLM setting; engine llama.cpp does not take it")
        if p.tensor_parallel_size != 1 or p.pipeline_parallel_size != 1:
            raise fail("tensor_parallel_size", "engine llama.cpp serves on one device only")
        if p.enable_prefix_caching:
            raise fail("enable_prefix_caching", "is a vLLM setting")
    else:
        if p.threads is not None:
            raise fail("threads", "is a llama.cpp setting; engine vllm does not take it")
        if isinstance(p.model, PackageFile):
            raise fail("model", "engine vllm needs a model id or directory, not a package file")
    if p.tool_call_parser and "--enable-auto-tool-choice" in p.extra_args:
        raise fail("extra_args", "--enable-auto-tool-choice is added with tool_call_parser")
    return p


def sampling_json(p: Profile) -> str:
    return json.dumps(dict(p.sampling), separators=(",", ":"), sort_keys=True)


def available(directory: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_file(path: Path) -> Profile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ProfileError(f"{path}: invalid YAML{where}: {exc}") from exc
    return parse_profile(path, data)


def load(name_or_path: str, directory: Path = PROFILES_DIR) -> Profile:
    """Load a profile by name (from `directory`) or by a path to a .yaml file."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        return load_file(Path(name_or_path))
    path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        names = ", ".join(available(directory)) or "(none)"
        raise ProfileError(f"unknown profile {name_or_path!r}; available: {names}")
    return load_file(path)
