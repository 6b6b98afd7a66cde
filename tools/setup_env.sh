#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything into it.
#
#   bash tools/setup_env.sh            # idempotent; a no-op (about a second) when nothing changed
#
# Environment variables:
#   DEFORMDETR_VENV         where the environment lives (default: <repo>/.venv). Point it at your own
#                           virtual environment to install the plugin there instead.
#   DEFORMDETR_SKIP_SETUP=1 use DEFORMDETR_VENV as it is, install nothing.
#   DEFORMDETR_WHEELS       where the built mmcv wheel is kept (default: ~/.cache/mmdet-deformdetr/wheels)
#   PYTHON                  the interpreter that creates the environment (default: python3)
#   TORCH_SPEC              the torch requirement (default: torch==2.13.0)
#
# mmcv 2.1.0 ships no wheels for current torch, so it is built from source with its C++ ops. Three traps,
# each handled below: it imports pkg_resources (setuptools<70 while building), it needs torch installed
# first, and it needs --no-build-isolation. The build (~14 min on 2 cores) happens once: the wheel is kept
# in DEFORMDETR_WHEELS and reused by every later environment.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DEFORMDETR_VENV:-$ROOT/.venv}
PY="$VENV/bin/python"
WHEELS=${DEFORMDETR_WHEELS:-$HOME/.cache/mmdet-deformdetr/wheels}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MMCV_VERSION=2.1.0

log() { printf '[setup_env] %s\n' "$*" >&2; }

if [ "${DEFORMDETR_SKIP_SETUP:-0}" = 1 ]; then
  [ -x "$PY" ] || { log "DEFORMDETR_SKIP_SETUP=1 but $PY does not exist"; exit 1; }
  exit 0
fi

# The stamp records what the environment was built from; when it matches, there is nothing to do.
fingerprint=$(cat "$ROOT/pyproject.toml" "$ROOT/tools/setup_env.sh" | sha256sum | cut -c1-16)
stamp="$VENV/.mmdet-deformdetr-setup"
if [ -x "$PY" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint:$ROOT" ]; then
  exit 0
fi

start=$(date +%s)
if [ ! -x "$PY" ]; then
  log "creating virtual environment at $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
pip() { "$PY" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip wheel

if ! "$PY" -c "import torch" 2>/dev/null; then
  log "installing $TORCH_SPEC"
  pip install -q "$TORCH_SPEC" numpy
fi

if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV_VERSION with its ops from source (about 14 minutes on 2 cores, done once)"
    pip install -q "setuptools<70" ninja
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      pip wheel -q --no-build-isolation --no-deps -w "$WHEELS" "mmcv==$MMCV_VERSION"
  fi
  log "installing mmcv from $WHEELS"
  pip install -q --no-deps "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl
fi

log "installing mmdet-deformdetr (editable) and its dependencies"
# torch 2.13 wants setuptools>=77 (torch.utils.cpp_extension); mmcv's build wanted <70; mmengine
# resolves `mmdet::` config paths with pkg_resources, which setuptools 81 removed.
pip install -q "setuptools>=77,<81"
# the tests run the ONNX export (deploy extra) and mmdet's analysis tools (analysis extra) too
pip install -q -e "$ROOT[tests,deploy,analysis]"

"$PY" -c "import mmdet_deformdetr, mmcv.ops, mmdet, onnxruntime, onnxscript, openvino, seaborn, psutil" \
  || { log "the environment at $VENV does not import; see the messages above"; exit 1; }
"$PY" -m mmdet_deformdetr >&2
# our C++ CPU attention kernel, compiled now rather than in a user's first iterations (or a test
# run's first attention call); once per machine, kernel version and torch version
log "building the C++ CPU attention kernel (if not built yet)"
"$PY" -c "
from mmdet_deformdetr.ops.cpu_kernel import cpu_extension_error, load_cpu_extension
if load_cpu_extension() is None:
    raise SystemExit(f'the C++ CPU kernel did not build: {cpu_extension_error()}')
" || { log "the C++ CPU kernel did not build (a C++ compiler with OpenMP is needed); see above"; exit 1; }
echo "$fingerprint:$ROOT" > "$stamp"
log "environment ready in $(( $(date +%s) - start )) s: $VENV"
