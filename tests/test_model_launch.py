"""The exact engine commands, the dry run, and the exec into the engine."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from model_server import embedded, gpus, launch, profiles
from model_server.__main__ import main
from model_server.profiles import PackageFile
from tests.conftest import require

VLLM = "/opt/vllm/bin/vllm"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MIXVLLM_PROFILE", "MODEL", "SERVED_MODEL_NAME", "TENSOR_PARALLEL_SIZE",
                 "PIPELINE_PARALLEL_SIZE", "MAX_MODEL_LEN", "GPU_MEMORY_UTILIZATION",
                 "MODEL_SERVER_HOST", "MODEL_SERVER_PORT", "NNODES", "DATA_PARALLEL_SIZE",
                 "CUDA_VISIBLE_DEVICES", "NODE_RANK", "MASTER_ADDR",
                 "VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MIXVLLM_VLLM_BIN", VLLM)
    monkeypatch.setenv("MIXVLLM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VLLM_API_KEY", "secret-key-123")


@pytest.fixture
def tiny_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A stand-in GGUF file the embedded profile serves (MODEL): the launcher only checks it
    exists."""
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("MODEL", str(gguf))
    return gguf


def dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[list[str], str]:
    own, engine = (
        (argv[: argv.index("--")], argv[argv.index("--") :]) if "--" in argv else (argv, ())
    )
    assert main([*own, "--dry-run", *engine]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, out
    return shlex.split(lines[0]), err


def test_qwen2_command_is_exact(capsys: pytest.CaptureFixture[str]) -> None:
    argv, err = dry_run(capsys, "--profile", "qwen2-7b-instruct")
    sampling = {"repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8}
    assert argv == [
        VLLM, "serve", "Qwen/Qwen2-7B-Instruct",
        "--served-model-name", "qwen2-7b-instruct",
        "--host", "127.0.0.1", "--port", "8000",
        "--tensor-parallel-size", "1", "--pipeline-parallel-size", "1",
        "--max-model-len", "32768", "--gpu-memory-utilization", "0.9", "--dtype", "auto",
        "--enable-prefix-caching",
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--generation-config", "auto",
        "--override-generation-config", json.dumps(sampling, separators=(",", ":")),
    ]  # fmt: skip
    # The key travels in the environment, never in argv (visible in ps), and is not printed.
    assert "# env: VLLM_API_KEY=<hidden>" in err
    assert "secret-key-123" not in err


@pytest.mark.parametrize("name", profiles.available())
def test_dry_run_for_every_profile(capsys: pytest.CaptureFixture[str], name: str) -> None:
    p = profiles.load(name)
    argv, _ = dry_run(capsys, "--profile", name)
    if p.engine == "vllm":
        assert argv[:2] == [VLLM, "serve"]
        opts = argv[3:]
        assert opts[opts.index("--served-model-name") + 1] == p.served_model_name
        assert opts[opts.index("--tensor-parallel-size") + 1] == str(p.tensor_parallel_size)
        assert opts[opts.index("--pipeline-parallel-size") + 1] == str(p.pipeline_parallel_size)
        assert "--enable-prefix-caching" in opts
        if p.distributed_executor_backend:
            assert opts[opts.index("--distributed-executor-backend") + 1] == "mp"
        if p.nnodes > 1:
            assert opts[opts.index("--nnodes") + 1] == str(p.nnodes)
            assert opts[opts.index("--node-rank") + 1] == "0"
    else:
        assert argv[:3] == [sys.executable, "-m", "model_server.embedded"]
        assert argv[argv.index("--alias") + 1] == p.served_model_name


def test_env_overrides_reach_the_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENSOR_PARALLEL_SIZE", "2")
    monkeypatch.setenv("PIPELINE_PARALLEL_SIZE", "2")
    monkeypatch.setenv("MAX_MODEL_LEN", "4096")
    monkeypatch.setenv("GPU_MEMORY_UTILIZATION", "0.8")
    argv, _ = dry_run(capsys, "--profile", "llama-3.1-8b-instruct", "--host", "0.0.0.0")
    line = shlex.join(argv)
    for part in ("--tensor-parallel-size 2", "--pipeline-parallel-size 2", "--max-model-len 4096",
                 "--gpu-memory-utilization 0.8", "--host 0.0.0.0"):  # fmt: skip
        assert part in line


def test_empty_env_overrides_keep_the_profiles_values(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # compose passes `${TENSOR_PARALLEL_SIZE:-}` through as an empty variable.
    for name in ("TENSOR_PARALLEL_SIZE", "PIPELINE_PARALLEL_SIZE", "NNODES", "MODEL"):
        monkeypatch.setenv(name, "")
    argv, _ = dry_run(capsys, "--profile", "llama-3.1-70b-instruct")
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "1"
    assert argv[2] == "meta-llama/Llama-3.1-70B-Instruct"


MULTINODE = "llama-3.1-405b-instruct-fp8-multinode"


@pytest.mark.parametrize(
    ("profile", "visible", "size", "note"),
    [
        ("llama-3.1-8b-instruct", "0,1,2,3,4,5,6,7", "8", "8 engine(s) x 1 GPU(s) on 8"),
        ("qwen2-7b-instruct", "2,3", "2", "2 engine(s) x 1 GPU(s) on 2"),
        # TP 4 on 6 GPUs: one engine fits, the data-parallel flag stays off, 2 GPUs idle.
        ("llama-3.1-70b-instruct", "0,1,2,3,4,5", None, "1 engine(s) x 4 GPU(s) on 6"),
    ],
)
def test_auto_data_parallel_fills_the_visible_gpus(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    profile: str, visible: str, size: str | None, note: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setenv("DATA_PARALLEL_SIZE", "auto")
    argv, err = dry_run(capsys, "--profile", profile)
    if size is None:
        assert "--data-parallel-size" not in argv
    else:
        assert argv[argv.index("--data-parallel-size") + 1] == size
    assert f"# data parallel: auto: {note} visible GPU(s)" in err


def test_data_parallel_size_is_rendered_and_checked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, err = dry_run(capsys, "--profile", "llama-3.1-70b-instruct", "--data-parallel-size", "2")
    assert argv[argv.index("--data-parallel-size") + 1] == "2"
    assert "# data parallel: 2 engines x 4 GPU(s) = 8 GPUs" in err
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    _, err = dry_run(capsys, "--profile", "llama-3.1-70b-instruct", "--data-parallel-size", "2")
    assert "# warning: data parallel size 2 needs 8 GPUs; 4 visible" in err
    # No GPU visible (a CPU box): one engine, said once, nothing rendered.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    argv, err = dry_run(capsys, "--profile", "qwen2-7b-instruct")
    assert "--data-parallel-size" not in argv
    assert "# warning: data_parallel_size auto: no GPU visible" in err
    for bad, message in (
        (["--profile", "qwen2-7b-instruct", "--data-parallel-size", "0"], "must be auto or an"),
        (["--profile", "embedded", "--data-parallel-size", "2"], "llama.cpp serves on one"),
        (["--profile", MULTINODE, "--data-parallel-size", "2"], "must be 1 when nnodes > 1"),
    ):
        assert main([*bad, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, err


def test_visible_gpus_follow_cuda_then_the_device_nodes(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (tmp_path / name).touch()
    assert gpus.visible_gpus({}, tmp_path) == 3
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "1"}, tmp_path) == 1
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, tmp_path) == 0
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1,-1,2"}, tmp_path) == 2
    assert gpus.visible_gpus({}, tmp_path / "missing") == 0


def test_multinode_head_and_worker_commands(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    head, err = dry_run(capsys, "--profile", MULTINODE)
    tail = ["--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1"]
    assert head[-6:] == tail
    # Node 0's own address defaults to MASTER_ADDR; NCCL/Gloo use the interface carrying it.
    assert "# env: VLLM_HOST_IP=127.0.0.1" in err.splitlines()
    assert "# env: NCCL_SOCKET_IFNAME=lo" in err.splitlines()
    worker, _ = dry_run(capsys, "--profile", MULTINODE, "--node-rank", "1")
    assert worker == [*head[:-6], "--nnodes", "2", "--node-rank", "1",
                      "--master-addr", "127.0.0.1", "--headless"]  # fmt: skip


def test_multinode_misconfigurations_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["--profile", MULTINODE]) == 2
    assert "set MASTER_ADDR (or --master-addr) to node 0's cluster address" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert main(["--profile", MULTINODE, "--node-rank", "2", "--dry-run"]) == 2
    assert "use 0..1" in capsys.readouterr().err
    assert main(["--profile", "qwen2-7b-instruct", "--node-rank", "1", "--dry-run"]) == 2
    assert "spans 1 node(s)" in capsys.readouterr().err
    monkeypatch.setenv("NNODES", "3")  # 8 x 2 workers do not split over 3 nodes
    assert main(["--profile", MULTINODE, "--dry-run"]) == 2
    assert "field 'nnodes': must divide tensor x pipeline parallel size (16)" in (
        capsys.readouterr().err
    )


def test_embedded_command_is_exact(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_gguf: Path
) -> None:
    gguf = tiny_gguf
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    argv, err = dry_run(capsys, "--port", "8123")
    threads = batch = str(len(os.sched_getaffinity(0)))  # every usable CPU
    assert argv == [
        sys.executable, "-m", "model_server.embedded", "--model", str(gguf), "--alias", "tiny",
        "--host", "127.0.0.1", "--port", "8123", "--threads", threads, "--threads-batch", batch,
        # 4 answers decoded together, each with the profile's 4096 tokens of context
        "--parallel", "4", "--ctx-size", "16384", "--cache-ram", "256",
        "--min-p", "0.05", "--repeat-penalty", "1.1", "--temp", "0.2", "--top-k", "40",
        "--top-p", "0.95",
    ]  # fmt: skip
    # The engine reads its key from LLAMA_API_KEY: never in argv (ps), never printed.
    assert "# env: LLAMA_API_KEY=<hidden>" in err
    # OpenMP keeps its own wait policy (spinning): sleeping threads cut one answer to a third.
    assert "OMP_WAIT_POLICY" not in err


def test_engine_args_after_double_dash(capsys: pytest.CaptureFixture[str]) -> None:
    argv, _ = dry_run(capsys, "--profile", "qwen2-7b-instruct", "--", "--enforce-eager")
    assert argv[-1] == "--enforce-eager"


def test_missing_model_dir_is_a_warning_in_dry_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launch, "PROJECT_ROOT", tmp_path)  # not the checkout's .models
    argv, err = dry_run(capsys, "--profile", "cpu-vllm")
    assert argv[2] == "<.models/smollm2-135m-instruct-hf>"
    assert "# warning: model path" in err
    assert "scripts/install-vllm-cpu.sh" in err


def test_missing_model_dir_fails_a_real_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launch, "PROJECT_ROOT", tmp_path)
    assert main(["--profile", "cpu-vllm"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mixvllm-serve: error: model path ")
    assert err.count("\n") == 1


def test_the_checkouts_models_are_found_from_any_directory(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    checkout = tmp_path / "checkout"
    (checkout / ".models" / "smollm2-135m-instruct-hf").mkdir(parents=True)
    monkeypatch.setattr(launch, "PROJECT_ROOT", checkout)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    argv, err = dry_run(capsys, "--profile", "cpu-vllm")
    assert argv[2] == str(checkout / ".models" / "smollm2-135m-instruct-hf")
    assert "warning" not in err


def test_list_shows_every_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in profiles.available():
        assert name in out
    assert "embedded (default)" in out


def test_unknown_profile_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--profile", "gpt-9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixvllm-serve: error: unknown profile 'gpt-9'; available: ")
    assert err.count("\n") == 1


def test_package_file_is_found_without_importing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = tmp_path / "fake_model_pkg"
    (package / "weights").mkdir(parents=True)
    # Importing this package would fail loudly: find_spec must not import it.
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "weights" / "m.Q4.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = launch.package_file(PackageFile("fake_model_pkg", "*.gguf"))
    assert found == package / "weights" / "m.Q4.gguf"
    with pytest.raises(launch.LaunchError, match="no file matching"):
        launch.package_file(PackageFile("fake_model_pkg", "*.safetensors"))
    with pytest.raises(launch.LaunchError, match="not installed"):
        launch.package_file(PackageFile("no_such_pkg_xyz", "*.gguf"))


def test_launcher_execs_the_engine_in_place(tmp_path: Path) -> None:
    """The engine replaces the launcher: same pid, so signals reach the engine itself."""
    fake_vllm = tmp_path / "vllm"
    fake_vllm.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        print(json.dumps({{"pid": os.getpid(), "argv": sys.argv[1:],
                          "key": os.environ.get("VLLM_API_KEY"),
                          "kv": os.environ.get("VLLM_CPU_KVCACHE_SPACE")}}))
        """))  # fmt: skip
    fake_vllm.chmod(0o755)
    model_dir = tmp_path / ".models" / "smollm2-135m-instruct-hf"
    model_dir.mkdir(parents=True)
    env = {**os.environ, "MIXVLLM_VLLM_BIN": str(fake_vllm), "VLLM_API_KEY": "k1",
           "MIXVLLM_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_server", "--profile", "cpu-vllm"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    seen = json.loads(out)
    assert seen["pid"] == proc.pid
    assert seen["argv"][:2] == ["serve", str(model_dir)]
    assert (seen["key"], seen["kv"]) == ("k1", "1")
    assert "profile 'cpu-vllm': vllm serving 'smollm2-135m-instruct'" in err


def test_missing_engine_binary_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".models" / "smollm2-135m-instruct-hf").mkdir(parents=True)
    env = {**os.environ, "MIXVLLM_VLLM_BIN": str(tmp_path / "nope" / "vllm"),
           "MIXVLLM_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "model_server", "--profile", "cpu-vllm"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("mixvllm-serve: error: vLLM not found")
    assert "install-vllm-cpu.sh" in result.stderr
    assert result.stderr.count("\n") == 1


def test_busy_port_is_one_line_before_the_engine_starts(tmp_path: Path) -> None:
    (tmp_path / ".models" / "smollm2-135m-instruct-hf").mkdir(parents=True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "MIXVLLM_VLLM_BIN": sys.executable, "VLLM_API_KEY": "k"}
        result = subprocess.run(
            [sys.executable, "-m", "model_server", "--profile", "cpu-vllm", "--port", str(port)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        f"mixvllm-serve: error: model server port {port} on 127.0.0.1 is not free "
        "(Address already in use)\n"
    )


@pytest.mark.usefixtures("tiny_gguf")
def test_missing_engine_names_the_install_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "ENGINE_PACKAGE", "xllamacpp_not_installed_here")
    assert main([]) == 1
    err = capsys.readouterr().err
    assert err == (
        "mixvllm-serve: error: llama.cpp's server (xllamacpp_not_installed_here) is not installed "
        "(install the "
        "embedded engine: bash scripts/install-embedded.sh .venv (or: make embedded))\n"
    )


def test_every_flag_the_launcher_writes_is_one_the_embedded_engine_takes(tiny_gguf: Path) -> None:
    """The launcher and model_server/embedded.py agree on llama-server's flag names: a profile
    with every sampling key builds a command the engine's parser accepts."""
    gguf = tiny_gguf
    values = {"temperature": 0.5, "top_p": 0.9, "top_k": 20, "min_p": 0.1,
              "repetition_penalty": 1.1, "presence_penalty": 0.2, "frequency_penalty": 0.3,
              "max_new_tokens": 64}  # fmt: skip
    assert set(values) == set(launch._LLAMA_SAMPLING_FLAGS)
    p = profiles.load("embedded")
    argv = launch._llama_cpp_argv(
        dataclasses.replace(p, sampling=values), str(gguf), sys.executable
    )
    ns = embedded.parser().parse_args(argv[3:])
    require(importlib.util.find_spec("xllamacpp") is not None, "xllamacpp is not installed")
    params = embedded.build_params(ns, {})
    assert (params.sampling.temp, params.sampling.top_k, params.n_predict) == (0.5, 20, 64)
    assert (params.n_parallel, params.n_ctx) == (p.parallel, p.max_model_len * p.parallel)
    assert params.endpoint_slots is False and params.ui is False
