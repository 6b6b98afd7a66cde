#!/usr/bin/env bash
# The demo, with the environment set up first (see tools/setup_env.sh): generate the synthetic shapes
# dataset, train a small two-stage Deformable DETR on CPU, evaluate, draw (artefacts in work_dirs/demo/).
#   bash tools/run_demo.sh            # about 15 minutes on 2 cores
#   bash tools/run_demo.sh --quick    # about 3 minutes (smoke run)
#   bash tools/run_demo.sh --long     # about 40 minutes
#   bash tools/run_demo.sh --iters N --seed S --work-dir DIR --cfg-options KEY=VALUE ...
# All options: .venv/bin/python tools/demo.py --help
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
VENV=${DEFORMDETR_VENV:-$ROOT/.venv}
# The C++ attention kernel is JIT-built into torch's extension cache. Its build folder is named by a
# hash of the sources, not of their path, so another checkout sharing ~/.cache/torch_extensions
# rebuilds it (about a minute) whenever the two alternate; a cache per checkout avoids that.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$ROOT/build/torch_extensions}
cd "$ROOT"
exec "$VENV/bin/python" tools/demo.py "$@"
