#!/usr/bin/env bash
# Local stand-ins for the images' public bases (no registry is reachable in CI), made from
# Debian packages with debootstrap and `docker import`. Each is tagged with a hash of its
# inputs (this file, the package list, the host's CA bundle) and rebuilt only when they change.
#   source docker/ci/dockerd.sh docker/ci/base-images.sh && ci_base_images
# sets CI_PYTHON_IMAGE (python3 3.11 + venv) and CI_NODE_IMAGE (node + npm).
# Debian's npm package does not configure under debootstrap (hundreds of node-* packages), so
# the node base gets Debian's nodejs and npm itself from the npm registry (`npm pack`).
CI_NPM_VERSION=10.9.2

CI_SUITE=bookworm
CI_CA_BUNDLE="${CI_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
_CI_BASE_SCRIPT="${BASH_SOURCE[0]}"

# Builds run behind whatever TLS-inspecting proxy the host trusts: every client gets its CAs.
_CI_CA_ENV=(
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
)

_ci_base_image() {  # NAME PACKAGES -> prints the image reference
    local name=$1 packages=$2 hash ref root
    hash=$(cat "$_CI_BASE_SCRIPT" "$CI_CA_BUNDLE" <(echo "$CI_SUITE $packages $CI_NPM_VERSION") | sha256sum | cut -c1-16)
    ref="mixvllm-ci/$name:$hash"
    if "$MIXVLLM_DOCKER" image inspect "$ref" >/dev/null 2>&1; then
        echo "$ref"
        return
    fi
    _ci_log "debootstrap $CI_SUITE ($packages) for $ref"
    root=$(mktemp -d "$CI_DOCKER_ROOT/rootfs.XXXXXX")
    mkdir -p "$CI_DOCKER_ROOT/debootstrap-cache"
    debootstrap --variant=minbase --include="$packages" \
        --cache-dir="$CI_DOCKER_ROOT/debootstrap-cache" \
        "$CI_SUITE" "$root" "$CI_DOCKER_MIRROR" >"$CI_DOCKER_ROOT/debootstrap-$name.log" 2>&1 \
        || { tail -20 "$CI_DOCKER_ROOT/debootstrap-$name.log" >&2; rm -rf "$root"; return 1; }
    cp "$CI_CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
    if [[ $name == node ]]; then
        mkdir -p "$root/usr/lib/node_modules/npm"
        (cd "$root/tmp" && npm pack --silent "npm@$CI_NPM_VERSION" >/dev/null)
        tar -xzf "$root/tmp/npm-$CI_NPM_VERSION.tgz" --strip-components=1 \
            -C "$root/usr/lib/node_modules/npm"
        rm "$root/tmp/npm-$CI_NPM_VERSION.tgz"
        ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/bin/npm"
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    local changes=(--change 'CMD ["/bin/bash"]')
    local kv
    for kv in "${_CI_CA_ENV[@]}"; do changes+=(--change "ENV $kv"); done
    tar -C "$root" -c . | "$MIXVLLM_DOCKER" import "${changes[@]}" - "$ref" >/dev/null
    rm -rf "$root"
    echo "$ref"
}

ci_base_images() {
    CI_PYTHON_IMAGE=$(_ci_base_image python "ca-certificates,python3,python3-venv") || return 1
    CI_NODE_IMAGE=$(_ci_base_image node "ca-certificates,nodejs") || return 1
    # The stand-in for vLLM's image: also what vLLM's CPU build links to, and the C++
    # compiler and Python headers torch.compile (used by its sampler) builds with.
    CI_VLLM_BASE_IMAGE=$(_ci_base_image vllm "ca-certificates,python3,python3-venv,python3-dev,libnuma1,libstdc++6,g++") || return 1
    export CI_PYTHON_IMAGE CI_NODE_IMAGE CI_VLLM_BASE_IMAGE
}
