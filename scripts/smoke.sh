#!/usr/bin/env bash
# Smoke set (import, PID 1 start, one swap, one watch) on Python 3.12 and 3.13, which also
# proves pyasyncore is pulled in where pyinotify needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
found=0
for version in 3.12 3.13; do
    python=""
    for candidate in "$HOME"/.pyenv/versions/"$version".*/bin/python"$version" \
                     "$(command -v python"$version" || true)"; do
        [[ -x $candidate ]] && { python=$candidate; break; }
    done
    if [[ -z $python ]]; then
        echo "smoke: python$version not installed on this machine; skipped" >&2
        continue
    fi
    found=1
    venv=build/venv-$version
    [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
    stamp=$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
    if [[ ! -e $stamp ]]; then
        log=$(mktemp)
        if ! { "$venv/bin/python" -m pip install -q --upgrade pip &&
               "$venv/bin/python" -m pip install -q . pytest pytest-timeout; } >"$log" 2>&1; then
            cat "$log" >&2; echo "smoke: pip install failed on $version" >&2; exit 1
        fi
        rm -f "$log"
        touch "$stamp"
    fi
    echo "== smoke on $("$venv/bin/python" --version)"
    "$venv/bin/python" -c 'import asyncore, pyinotify, hotswapd.watch.watcher' 2>/dev/null \
        || "$venv/bin/python" -c 'import pyinotify, hotswapd.watch.watcher'
    # The installed package (not the checkout) is what runs: run from outside the repo root.
    PATH="$PWD/.venv/bin:$PATH" HOTSWAPD_TEST_INSTALLED=1 \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir=. tests/test_smoke.py
done
((found)) || echo "smoke: no Python 3.12/3.13 found; only the 3.11 suite ran" >&2
