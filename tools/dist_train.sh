#!/usr/bin/env bash
# Multi-process training with torchrun (mmdet's tools/dist_train.sh, on torch.distributed.run).
#   bash tools/dist_train.sh CONFIG NPROC [tools/train.py args...]
# Several machines: run it on each with NNODES, NODE_RANK, MASTER_ADDR and PORT set, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh CONFIG 8
# NPROC is the number of processes per machine (GPUs; without CUDA, CPU processes on gloo).
# PYTHON picks the interpreter (default: the project's .venv).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NPROC [tools/train.py args...]" >&2
  exit 2
fi
CONFIG=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$ROOT/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
