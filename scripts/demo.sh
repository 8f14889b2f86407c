#!/usr/bin/env bash
# The live demo: hotswapd as PID 1 supervising the example Go server, a hot swap under
# load to a new version, a bad build rolled back, and the result table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
