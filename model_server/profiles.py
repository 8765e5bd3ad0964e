"""Model profiles: the YAML files in `model_server/profiles/`, validated on load.

A profile names an engine and everything that engine needs to serve one model. Every
validation error names the file and the field, so a typo in a profile is one clear line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import yaml
from pydantic import ConfigDict, Field, PlainValidator, ValidationError
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails

from model_server import requantize
from model_server.errors import LauncherError

Engine = Literal["vllm", "llama.cpp"]
PROFILES_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "embedded"
SamplingKey = Literal[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "max_new_tokens",
]


class ProfileError(LauncherError):
    """A profile is missing, unreadable or invalid."""

    exit_code = 2


@dataclasses.dataclass(frozen=True)
class PackageFile:
    """A model file shipped inside an installed Python package (located, never imported);
    `convert_to`: served from a copy in that llama.cpp format (model_server/requantize.py)."""

    package: str
    pattern: str
    convert_to: str | None = None

    def __str__(self) -> str:
        shown = f"{self.package}:{self.pattern}"
        return f"{shown} as {self.convert_to}" if self.convert_to else shown


_PACKAGE_KEYS = {"package", "file"}


def _model(raw: object) -> str | PackageFile:
    if isinstance(raw, PackageFile) or (isinstance(raw, str) and raw.strip()):
        return raw
    if isinstance(raw, dict) and _PACKAGE_KEYS <= set(raw) <= {*_PACKAGE_KEYS, "convert_to"}:
        package, pattern, target = raw["package"], raw["file"], raw.get("convert_to")
        if isinstance(package, str) and isinstance(pattern, str) and package and pattern:
            if target is None or target in requantize.TARGETS:
                return PackageFile(package, pattern, target)
            known = ", ".join(requantize.TARGETS)
            raise ValueError(f"convert_to must be one of {known}, got {target!r}")
    raise ValueError(
        "must be a model id or path, or a mapping {package: NAME, file: GLOB[, convert_to: "
        f"FORMAT]}}, got {raw!r}"
    )


def _number(value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"must be a number, got {value!r}")
    return value


def _env_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be a string or number, got {value!r}")
    return str(value)


Text = Annotated[str, Field(pattern=r"\S")]
# Fields that only one engine understands; setting them for the other is a mistake.
_VLLM_ONLY = (
    "gpu_memory_utilization",
    "dtype",
    "quantization",
    "reasoning_parser",
    "tool_call_parser",
    "distributed_executor_backend",
)


# strict: YAML's `true` is not the integer 1, nor `8000` the string "8000".
@dataclass(frozen=True, config=ConfigDict(extra="forbid", strict=True))
class Profile:
    name: Text
    path: Path
    engine: Engine
    model: Annotated[str | PackageFile, PlainValidator(_model)]
    served_model_name: Text
    description: str = ""
    host: Text = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_model_len: int | None = Field(default=None, ge=16)
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    # vLLM's native multi-node mode: the TP x PP workers are spread evenly over this many nodes.
    nnodes: int = Field(default=1, ge=1)
    # vLLM engines, each on its own TP x PP GPUs, behind one API server; "auto": as many as
    # the visible GPUs hold (model_server/gpus.py).
    data_parallel_size: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None
    quantization: Text | None = None
    enable_prefix_caching: bool = False
    reasoning_parser: Text | None = None
    tool_call_parser: Text | None = None
    distributed_executor_backend: Text | None = None
    # llama.cpp only: CPU threads, to decode and to read prompts; None means every usable one.
    threads: int | None = Field(default=None, ge=1)
    # llama.cpp only: answers decoded together (server slots, continuous batching); each
    # slot holds max_model_len tokens of context.
    parallel: int | None = Field(default=None, ge=1, le=64)
    # Default sampling for requests that do not set their own (vLLM:
    # --override-generation-config; llama.cpp: --temp, --top-k, ...).
    sampling: Mapping[SamplingKey, Annotated[float | int, PlainValidator(_number)]] = Field(
        default_factory=dict
    )
    # Extra environment for the engine process (e.g. VLLM_CPU_KVCACHE_SPACE).
    env: Mapping[str, Annotated[str, PlainValidator(_env_value)]] = Field(default_factory=dict)
    # Lax: YAML gives a list.
    extra_args: tuple[str, ...] = Field(default=(), strict=False)
    # Printed when the engine or the model is missing.
    install_hint: str = ""

    def __post_init__(self) -> None:
        """Fields that do not suit the engine; also run on `with_overrides`."""
        if self.name != self.path.stem:
            self._fail("name", f"must match the file name '{self.path.stem}', got {self.name!r}")
        if self.engine == "llama.cpp":
            self._check_llama_cpp()
        else:
            for key in ("threads", "parallel"):
                if getattr(self, key) is not None:
                    self._fail(key, "is a llama.cpp setting; engine vllm does not take it")
            if isinstance(self.model, PackageFile):
                self._fail("model", "engine vllm needs a model id or directory, not a package file")
            self._check_nodes()
        if self.tool_call_parser and "--enable-auto-tool-choice" in self.extra_args:
            self._fail("extra_args", "--enable-auto-tool-choice is added with tool_call_parser")

    def _check_llama_cpp(self) -> None:
        for key in _VLLM_ONLY:
            if getattr(self, key):
                self._fail(key, "is a vLLM setting; engine llama.cpp does not take it")
        if self.tensor_parallel_size != 1 or self.pipeline_parallel_size != 1:
            self._fail("tensor_parallel_size", "engine llama.cpp serves on one device only")
        if self.nnodes != 1:
            self._fail("nnodes", "engine llama.cpp serves on one device only")
        if self.data_parallel_size != 1:
            self._fail("data_parallel_size", "engine llama.cpp serves on one device only")
        if self.enable_prefix_caching:
            self._fail("enable_prefix_caching", "is a vLLM setting")

    def _check_nodes(self) -> None:
        workers = self.tensor_parallel_size * self.pipeline_parallel_size
        if workers % self.nnodes:
            self._fail("nnodes", f"must divide tensor x pipeline parallel size ({workers})")
        # vLLM spans nodes natively only with its multiprocessing executor.
        if self.nnodes > 1 and self.distributed_executor_backend not in (None, "mp"):
            self._fail("distributed_executor_backend", "must be mp (or unset) when nnodes > 1")
        if self.nnodes > 1 and self.data_parallel_size != 1:
            self._fail("data_parallel_size", "must be 1 when nnodes > 1 (one model per cluster)")

    def _fail(self, key: str, message: str) -> NoReturn:
        # Not a ValueError: pydantic lets it through unwrapped, already naming file and field.
        raise ProfileError(f"{self.path}: field '{key}': {message}")


_FIXED = {"missing": "is required", "unexpected_keyword_argument": "unknown field"}
_EXPECTED = {
    "string_type": "a non-empty string",
    "string_pattern_mismatch": "a non-empty string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "tuple_type": "a list of strings",
}


def _bounds(name: str) -> str:
    limits: dict[str, Any] = {}
    # Set by pydantic's decorator, which mypy does not see.
    for constraint in Profile.__pydantic_fields__[name].metadata:  # type: ignore[attr-defined]
        limits.update(dataclasses.asdict(constraint))
    if "gt" in limits:
        return f"in ({limits['gt']}, {limits['le']}]"
    if "le" in limits:
        return f"between {limits['ge']} and {limits['le']}"
    return f">= {limits['ge']}"


def _describe(err: ErrorDetails) -> tuple[str, str]:
    """The field and message of a pydantic error, worded like the other profile errors."""
    loc, value, ctx = err["loc"], err["input"], err.get("ctx", {})
    # ("sampling", "top_k", "[key]") -> sampling.top_k; ("extra_args", 0) -> extra_args
    key = ".".join(part for part in loc[:2] if isinstance(part, str))
    kind = "tuple_type" if isinstance(loc[-1], int) else err["type"]
    if kind in _FIXED:
        message = _FIXED[kind]
    elif kind == "value_error":
        message = str(ctx["error"])
    elif kind == "literal_error":
        choices = ctx["expected"].replace("'", "").replace(" or ", ", ")
        if loc[-1] == "[key]":
            message = f"unknown; expected one of {choices}"
        else:
            message = f"must be one of {choices}, got {value!r}"
    elif kind in ("greater_than", "greater_than_equal", "less_than_equal"):
        message = f"must be {_bounds(key)}, got {value}"
    else:
        message = f"must be {_EXPECTED[kind]}, got {value!r}" if kind in _EXPECTED else err["msg"]
    return key, message


def _build(path: Path, fields: Mapping[str, Any]) -> Profile:
    try:
        return Profile(**fields)
    except ValidationError as exc:
        key, message = _describe(exc.errors()[0])
        raise ProfileError(f"{path}: field '{key}': {message}") from None


def parse_profile(path: Path, data: object) -> Profile:
    """Build a Profile from the parsed YAML of `path`; raise ProfileError naming the field."""
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: must be a YAML mapping of fields, got {type(data).__name__}")
    # A field left empty (`threads:`) takes its default.
    fields = {key: value for key, value in data.items() if value is not None}
    unknown = [str(key) for key in fields if key == "path" or not isinstance(key, str)]
    if unknown:
        raise ProfileError(f"{path}: field '{unknown[0]}': unknown field")
    return _build(path, {"name": path.stem, **fields, "path": path})


def with_overrides(profile: Profile, **changes: Any) -> Profile:
    """`profile` with `changes`, validated like a profile file."""
    return _build(profile.path, {**vars(profile), **changes})


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
