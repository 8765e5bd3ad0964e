"""Overrides (flags > env > profile) and the API key's sources."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from model_server import config
from model_server.__main__ import build_parser
from model_server.config import ConfigError


def _build(argv: list[str], env: dict[str, str]) -> config.ServeConfig:
    args = build_parser().parse_args(["serve", *argv])
    return config.build(args, env)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {config.STATE_DIR_ENV: str(tmp_path / "state"), config.API_KEY_ENV: "k-from-env"}


def test_profile_values_without_overrides(env: dict[str, str]) -> None:
    p = _build(["--profile", "llama-3.1-70b-instruct"], env).profile
    assert (p.tensor_parallel_size, p.max_model_len, p.port) == (4, 32768, 8000)


def test_env_overrides_the_profile(env: dict[str, str]) -> None:
    env |= {
        "MIXVLLM_PROFILE": "qwen2-7b-instruct",
        "MODEL": "Qwen/Qwen2.5-7B-Instruct",
        "TENSOR_PARALLEL_SIZE": "2",
        "PIPELINE_PARALLEL_SIZE": "3",
        "MAX_MODEL_LEN": "8192",
        "GPU_MEMORY_UTILIZATION": "0.5",
        "MODEL_SERVER_HOST": "0.0.0.0",
        "MODEL_SERVER_PORT": "9001",
    }
    p = _build([], env).profile
    assert p.name == "qwen2-7b-instruct"
    assert p.model == "Qwen/Qwen2.5-7B-Instruct"
    # A different model is served under its own name unless SERVED_MODEL_NAME says otherwise.
    assert p.served_model_name == "Qwen/Qwen2.5-7B-Instruct"
    assert (p.tensor_parallel_size, p.pipeline_parallel_size) == (2, 3)
    assert (p.max_model_len, p.gpu_memory_utilization) == (8192, 0.5)
    assert (p.host, p.port) == ("0.0.0.0", 9001)


def test_flags_win_over_env(env: dict[str, str]) -> None:
    env |= {"TENSOR_PARALLEL_SIZE": "2", "MODEL_SERVER_PORT": "9001", "SERVED_MODEL_NAME": "e"}
    argv = ["--profile", "qwen2-7b-instruct", "--tensor-parallel-size", "8", "--port", "9002"]
    p = _build([*argv, "--served-model-name", "f"], env).profile
    assert (p.tensor_parallel_size, p.port, p.served_model_name) == (8, 9002, "f")


def test_local_gguf_model_is_served_under_its_file_name(env: dict[str, str]) -> None:
    p = _build(["--model", "./models/tiny-chat.Q4_K_M.gguf"], env).profile
    assert p.served_model_name == "tiny-chat.Q4_K_M"


@pytest.mark.parametrize(
    ("env_extra", "argv", "message"),
    [
        ({"TENSOR_PARALLEL_SIZE": "two"}, [], "TENSOR_PARALLEL_SIZE: must be an integer 1..1024"),
        ({}, ["--max-model-len", "8"], "--max-model-len: must be an integer 16..10000000"),
        ({"MODEL_SERVER_PORT": "0"}, [], "MODEL_SERVER_PORT: must be an integer 1..65535"),
        (
            {"GPU_MEMORY_UTILIZATION": "95"},
            [],
            "GPU_MEMORY_UTILIZATION: must be a number in (0, 1]",
        ),
    ],
)
def test_bad_override_names_its_source(
    env: dict[str, str], env_extra: dict[str, str], argv: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _build(["--profile", "qwen2-7b-instruct", *argv], env | env_extra)
    assert message in str(err.value)


def test_override_that_does_not_fit_the_engine(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"profile 'embedded'.*one device only"):
        _build(["--tensor-parallel-size", "2"], env)


def test_api_key_from_env_wins(env: dict[str, str]) -> None:
    assert config.resolve_api_key(env) == ("k-from-env", "VLLM_API_KEY")
    assert not config.api_key_file(env).exists()


def test_local_api_key_is_generated_once_private_and_reused(env: dict[str, str]) -> None:
    del env[config.API_KEY_ENV]
    key, source = config.resolve_api_key(env)
    path = config.api_key_file(env)
    assert source == str(path)
    assert len(key) >= 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.resolve_api_key(env) == (key, source)


def test_dry_run_never_writes_the_key(env: dict[str, str]) -> None:
    del env[config.API_KEY_ENV]
    cfg = _build(["--profile", "qwen2-7b-instruct", "--dry-run"], env)
    assert cfg.dry_run
    assert not config.api_key_file(env).exists()


def test_no_key_and_no_creation_is_an_error(env: dict[str, str]) -> None:
    del env[config.API_KEY_ENV]
    with pytest.raises(ConfigError, match="no API key"):
        config.resolve_api_key(env, create=False)
