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
echo "== go vet / go test (example server)"
(cd docker/server && ../../.venv/bin/go vet ./... && ../../.venv/bin/go test ./...)
echo "== pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
echo "== smoke on other Pythons"
bash scripts/smoke.sh
