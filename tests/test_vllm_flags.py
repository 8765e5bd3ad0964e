"""The launcher's dry-run command for every vLLM profile against the installed vLLM's real CLI.

Flag names are checked against `vllm serve --help=all`, and each whole command line is parsed
and validated by vLLM's own `serve` parser, so a renamed flag or a parser/choice that this
vLLM release doesn't know fails here instead of at deploy time on a GPU box.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from model_server import profiles
from tests import vllm_cpu
from tests.conftest import require

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

VLLM_PROFILES = [n for n in profiles.available() if profiles.load(n).engine == "vllm"]


@pytest.fixture(scope="module")
def accepted() -> frozenset[str]:
    ok, why = vllm_cpu.installed()
    require(ok, why)
    return vllm_cpu.parse_help_flags(vllm_cpu.serve_help())


@pytest.fixture(scope="module")
def dry_runs() -> dict[str, list[str]]:
    ok, why = vllm_cpu.installed()
    require(ok, why)
    runs = {name: vllm_cpu.dry_run_argv(name) for name in VLLM_PROFILES}
    # Multi-node profiles: node 0 and a headless worker, as each node runs them.
    for name in VLLM_PROFILES:
        if profiles.load(name).nnodes > 1:
            node = {"MASTER_ADDR": "10.0.0.1", "VLLM_HOST_IP": "127.0.0.1"}
            runs[name] = vllm_cpu.dry_run_argv(name, node)
            runs[f"{name} (node 1)"] = vllm_cpu.dry_run_argv(name, {**node, "NODE_RANK": "1"})
    return runs


def test_help_parser_sees_real_flags_only(accepted: frozenset[str]) -> None:
    # Guards the parser itself: known flags (incl. a --no- form and an alias) are found,
    # and words from descriptions are not taken for flags.
    for flag in (
        "--max-model-len",
        "--served-model-name",
        "--api-key",
        "--no-enable-prefix-caching",
    ):
        assert flag in accepted
    assert "--no-such-flag" not in accepted
    assert all(f.startswith("--") and " " not in f for f in accepted)


def test_there_are_vllm_profiles() -> None:
    assert "cpu-vllm" in VLLM_PROFILES
    assert len(VLLM_PROFILES) >= 4


@pytest.mark.parametrize("profile", VLLM_PROFILES)
def test_dry_run_flags_exist_in_installed_vllm(
    profile: str, accepted: frozenset[str], dry_runs: dict[str, list[str]]
) -> None:
    argv = dry_runs[profile]
    assert Path(argv[0]).name == "vllm" and argv[1] == "serve", argv
    flags = vllm_cpu.command_flags(argv)
    assert "--served-model-name" in flags
    unknown = [f for f in flags if f not in accepted]
    assert not unknown, f"{profile}: flags unknown to the installed vLLM: {unknown}"


def test_dry_runs_parse_and_validate_with_vllms_own_parser(
    dry_runs: dict[str, list[str]],
) -> None:
    payload = {name: argv[1:] for name, argv in dry_runs.items()}
    # Known-bad lines in the same run show that the check can fail.
    model = dry_runs["cpu-vllm"][2]
    payload["<misspelt flag>"] = ["serve", model, "--max-model-length", "8"]
    payload["<lone flag>"] = ["serve", model, "--enable-auto-tool-choice"]
    payload["<unknown parser>"] = [*payload["<lone flag>"], "--tool-call-parser", "no_such"]
    result = subprocess.run(
        [str(vllm_cpu.vllm_python()), str(Path(__file__).with_name("vllm_parse_args.py"))],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout)
    assert "--max-model-length" in (errors.pop("<misspelt flag>") or "")
    assert "--tool-call-parser" in (errors.pop("<lone flag>") or "")
    assert "no_such" in (errors.pop("<unknown parser>") or "")
    assert errors == dict.fromkeys(dry_runs)
