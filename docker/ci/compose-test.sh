#!/usr/bin/env bash
# `make compose-test`: build both images and run the compose stack for real, on a private
# Docker engine that this script starts and stops (by PID). Prints each phase's time.
set -euo pipefail
cd "$(dirname "$0")/../.."
source docker/ci/dockerd.sh
source docker/ci/base-images.sh

START=$SECONDS
phase() {
    local name=$1 t=$SECONDS
    shift
    _ci_log "--- $name"
    "$@"
    _ci_log "--- $name: $((SECONDS - t)) s"
}

phase install ci_docker_install
trap 'ci_docker_stop; _ci_log "total: $((SECONDS - START)) s"' EXIT
phase dockerd ci_docker_start
phase base-images ci_base_images
DOCKER=$MIXVLLM_DOCKER

prebuilt_wheel() {
    # The engine's wheel (prebuilt, manylinux): from pip's cache after `make embedded`.
    rm -f docker/wheels/*.whl
    bash scripts/install-embedded.sh --wheel docker/wheels .venv
}

build_images() {
    local bases
    bases=$(mktemp --suffix=.yml)
    cat >"$bases" <<YML
services:
  model-server:
    build:
      args: {PYTHON_IMAGE: "$CI_PYTHON_IMAGE"}
  terminal-server:
    build:
      args: {PYTHON_IMAGE: "$CI_PYTHON_IMAGE", NODE_IMAGE: "$CI_NODE_IMAGE"}
  prometheus:
    build:
      args: {DEBIAN_IMAGE: "$CI_PYTHON_IMAGE"}
YML
    VLLM_API_KEY=unused MIXVLLM_TERMINAL_TOKEN=unused-token \
        "$DOCKER" compose -f docker-compose.yml -f docker-compose.cpu.yml -f "$bases" \
        --profile monitoring build
    rm -f "$bases"
    # vLLM's router (deploy/compose.replicas.yml, deploy/k8s): the wheel from PyPI.
    "$DOCKER" build -q -f Dockerfile.router --build-arg PYTHON_IMAGE="$CI_PYTHON_IMAGE" \
        -t mixvllm-router:latest . >/dev/null
    # The GPU image on a stand-in base: catches a broken COPY/RUN step in Dockerfile.model.
    "$DOCKER" build -q -f docker/ci/vllm-standin.Dockerfile \
        --build-arg PYTHON_IMAGE="$CI_VLLM_BASE_IMAGE" -t mixvllm-ci/vllm-standin:latest . >/dev/null
    "$DOCKER" build -q -f Dockerfile.model --build-arg VLLM_IMAGE=mixvllm-ci/vllm-standin:latest \
        -t mixvllm-model-server:ci-standin . >/dev/null
    "$DOCKER" run --rm --entrypoint sh mixvllm-model-server:ci-standin \
        -c 'test "$(id -u)" = 10001 && mixvllm-serve --profile qwen2-7b-instruct --dry-run >/dev/null'
    "$DOCKER" image prune -f >/dev/null
}

phase wheel prebuilt_wheel
phase images build_images
phase stack env MIXVLLM_REQUIRE_ALL=1 .venv/bin/pytest -m docker -p no:cacheprovider -s \
    tests/e2e/test_compose_stack.py tests/e2e/test_compose_multinode.py \
    tests/e2e/test_compose_replicas.py tests/e2e/test_compose_team.py
