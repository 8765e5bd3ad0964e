#!/usr/bin/env bash
# A private Docker engine for `make compose-test`, next to (never instead of) any other one.
#   source docker/ci/dockerd.sh && ci_docker_install && ci_docker_start   (then ci_docker_stop)
# Engine, containerd and runc from Debian's docker.io; Compose v2 and buildx from Debian's next
# release, unpacked into a private cli-plugins folder: the host's apt sources stay as they are.
# Layers live under $CI_DOCKER_ROOT so they survive between runs; from nothing it still works.

CI_DOCKER_ROOT="${CI_DOCKER_ROOT:-/var/lib/mixvllm-docker}"
CI_DOCKER_RUN="${CI_DOCKER_RUN:-/run/mixvllm-docker}"
CI_DOCKER_NEXT_SUITE="${CI_DOCKER_NEXT_SUITE:-trixie}"
CI_DOCKER_MIRROR="${CI_DOCKER_MIRROR:-http://deb.debian.org/debian}"
export DOCKER_HOST="unix://$CI_DOCKER_RUN/docker.sock"
export DOCKER_CONFIG="$CI_DOCKER_ROOT/config"
# The Debian CLI, whatever else is first on PATH.
export MIXVLLM_DOCKER=/usr/bin/docker

_ci_log() { echo "compose-test: $*" >&2; }
_ci_sudo() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
_ci_as_root=()
[[ $(id -u) == 0 ]] || _ci_as_root=(sudo)

ci_docker_install() {
    local missing=()
    [[ -x /usr/sbin/dockerd && -x /usr/bin/docker ]] || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v iptables >/dev/null || missing+=(iptables)
    if ((${#missing[@]})); then
        _ci_log "apt-get install ${missing[*]}"
        _ci_sudo apt-get update -qq
        # The package must not start the system's own dockerd: ours runs beside it.
        local policy=/usr/sbin/policy-rc.d added=""
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' | _ci_sudo tee "$policy" >/dev/null
            _ci_sudo chmod +x "$policy"
            added=1
        fi
        DEBIAN_FRONTEND=noninteractive _ci_sudo apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
        [[ -n $added ]] && _ci_sudo rm -f "$policy"
    fi
    _ci_install_plugins
}

_ci_install_plugins() {
    local plugins="$DOCKER_CONFIG/cli-plugins"
    if "$MIXVLLM_DOCKER" compose version >/dev/null 2>&1 \
        && "$MIXVLLM_DOCKER" buildx version >/dev/null 2>&1; then
        return
    fi
    _ci_log "fetching docker-compose and docker-buildx from Debian $CI_DOCKER_NEXT_SUITE"
    local apt="$CI_DOCKER_ROOT/apt" work
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$plugins"
    echo "deb $CI_DOCKER_MIRROR $CI_DOCKER_NEXT_SUITE main" >"$apt/sources.list"
    local opts=(
        -o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=-"
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
        -o "Dir::State::status=$apt/status" -o APT::Get::List-Cleanup=0
    )
    : >"$apt/status"
    apt-get "${opts[@]}" update -qq
    work=$(mktemp -d)
    chmod 755 "$work"  # apt downloads as its _apt user
    (cd "$work" && apt-get "${opts[@]}" download docker-compose docker-buildx >/dev/null)
    for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/root"; done
    cp "$work"/root/usr/libexec/docker/cli-plugins/docker-{compose,buildx} "$plugins/"
    rm -rf "$work"
    "$MIXVLLM_DOCKER" compose version >&2
    "$MIXVLLM_DOCKER" buildx version >&2
}

_ci_uplink_mtu() {
    local dev
    dev=$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1); exit}')
    cat "/sys/class/net/${dev:-eth0}/mtu" 2>/dev/null || echo 1500
}

ci_docker_start() {
    mkdir -p "$CI_DOCKER_ROOT/data" "$CI_DOCKER_RUN"
    if "$MIXVLLM_DOCKER" info >/dev/null 2>&1; then
        _ci_log "dockerd already answers on $DOCKER_HOST"
        return
    fi
    local log="$CI_DOCKER_ROOT/dockerd.log"
    _ci_log "starting dockerd (data root $CI_DOCKER_ROOT/data, log $log)"
    # Started directly (not through a function) so $! is dockerd's own PID.
    "${_ci_as_root[@]}" /usr/sbin/dockerd \
        --data-root "$CI_DOCKER_ROOT/data" --exec-root "$CI_DOCKER_RUN/exec" \
        --host "$DOCKER_HOST" --pidfile "$CI_DOCKER_RUN/dockerd.pid" \
        --storage-driver overlay2 --iptables=true --mtu "$(_ci_uplink_mtu)" \
        >"$log" 2>&1 &
    CI_DOCKERD_PID=$!
    local i
    for ((i = 0; i < 120; i++)); do
        if "$MIXVLLM_DOCKER" info >/dev/null 2>&1; then return; fi
        if ! kill -0 "$CI_DOCKERD_PID" 2>/dev/null; then
            tail -20 "$log" >&2
            _ci_log "dockerd exited during start-up"
            return 1
        fi
        sleep 0.5
    done
    _ci_log "dockerd did not answer within 60 s"
    return 1
}

# Stops only the dockerd this shell started (by its PID), with its containerd.
ci_docker_stop() {
    [[ -n ${CI_DOCKERD_PID:-} ]] || return 0
    kill -TERM "$CI_DOCKERD_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 60; i++)); do
        kill -0 "$CI_DOCKERD_PID" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL "$CI_DOCKERD_PID" 2>/dev/null || true
    wait "$CI_DOCKERD_PID" 2>/dev/null || true
    CI_DOCKERD_PID=""
}
