#!/usr/bin/env bash
# The whole test suite, with the environment set up first (see tools/setup_env.sh).
#   bash tools/run_tests.sh [pytest args]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
VENV=${DEFORMDETR_VENV:-$ROOT/.venv}
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
