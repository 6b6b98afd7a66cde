#!/usr/bin/env bash
# The demo, with the environment set up first (see tools/setup_env.sh): generate the synthetic shapes
# dataset, train a small two-stage Deformable DETR on CPU, evaluate, draw (artefacts in work_dirs/demo/).
#   bash tools/run_demo.sh            # about 10 minutes on 2 cores (+ the first setup)
#   bash tools/run_demo.sh --quick    # about 2 minutes (smoke run)
#   bash tools/run_demo.sh --long     # about 12 minutes
#   bash tools/run_demo.sh --iters N --seed S --work-dir DIR --cfg-options KEY=VALUE ...
# All options: .venv/bin/python tools/demo.py --help
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
VENV=${DEFORMDETR_VENV:-$ROOT/.venv}
cd "$ROOT"
exec "$VENV/bin/python" tools/demo.py "$@"
