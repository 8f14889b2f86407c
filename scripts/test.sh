#!/usr/bin/env bash
# The test command: installs what it needs, then lint, types, the whole suite, and the
# Python 3.12/3.13 smoke set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

export GOTOOLCHAIN=local GOFLAGS=-mod=mod
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
export GOPROXY=off
echo "== go vet / go test (the hotswap package, the example server, the test servers)"
go=$PWD/.venv/bin/go
for module in go docker/server tests/servers tests/servers/gosystemd tests/servers/tableflip; do
    (cd "$module" && "$go" vet ./... && "$go" test ./...)
done
echo "== docker engine (for tests/test_docker.py)"
bash scripts/docker.sh >/dev/null
echo "== pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
echo "== smoke on other Pythons"
bash scripts/smoke.sh
