#!/usr/bin/env bash
# The tests, with the environment set up first (see tools/setup_env.sh).
#   bash tools/run_tests.sh [pytest args]          the whole suite (what CI runs, .ci/run)
#   bash tools/run_tests.sh --fast [pytest args]   the fast tier: tests not marked slow or dist,
#                                                  within its budget (CONTRIBUTING.md)
# Both end with the fast tier's time against its budget (tests/helpers/tiers.py).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
VENV=${DEFORMDETR_VENV:-$ROOT/.venv}
cd "$ROOT"
# a child, not exec: the tier report's start-up time and CPU seconds are then pytest's own, without
# the set-up's (an exec'd process keeps the time and children's CPU of the shell before it)
"$VENV/bin/python" -m pytest "$@"
