#!/usr/bin/env bash
# Multi-process training with torchrun (mmdet's tools/dist_train.sh, on torch.distributed.run).
#   bash tools/dist_train.sh CONFIG NPROC [tools/train.py args...]
# Several machines: run it on each with NNODES, NODE_RANK, MASTER_ADDR and PORT set, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh CONFIG 8
# NPROC is the number of processes per machine (GPUs; without CUDA, CPU processes on gloo).
# PYTHON picks the interpreter (default: the project's .venv).
#
# Stopping (docs/robustness.md): SIGTERM, SIGINT or SIGUSR1 sent to this script reaches the
# workers as SIGTERM (through torchrun, which forwards SIGTERM on every torch version); they finish
# the iteration, save its checkpoint once all agree, and exit. This script then exits with 75
# (stopped after saving, resumable: run it again with --resume). torchrun itself reports a worker's
# exit status as 1, so the workers tell this script by creating $DEFORMDETR_PREEMPTED_FILE.
# STOP_TIMEOUT (default 120 s) is how long torchrun lets the workers save before it kills them.
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
PREEMPTED=75

MARKER_DIR=$(mktemp -d)
trap 'rm -rf "$MARKER_DIR"' EXIT
export DEFORMDETR_PREEMPTED_FILE="$MARKER_DIR/preempted"
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-${STOP_TIMEOUT:-120}}

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$ROOT/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}" &
LAUNCHER=$!
WORKERS=""

stop() {  # forward a stop signal ($1) to torchrun as SIGTERM; remember its workers
  echo "dist_train.sh: SIG$1 received; the workers finish the iteration, save and stop" >&2
  WORKERS="$WORKERS $(pgrep -P "$LAUNCHER" || true)"
  kill -TERM "$LAUNCHER" 2>/dev/null || true
}
trap 'stop TERM' TERM
trap 'stop INT' INT
trap 'stop USR1' USR1

status=0
while :; do
  status=0
  wait "$LAUNCHER" || status=$?
  # a trapped signal interrupts `wait`; torchrun is still running then
  kill -0 "$LAUNCHER" 2>/dev/null || break
done
# torchrun may end before its workers (a second signal cuts its graceful wait short): let them
# finish their save
deadline=$((SECONDS + TORCH_ELASTIC_SHUTDOWN_TIMEOUT))
for pid in $WORKERS; do
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
done
if [ -e "$DEFORMDETR_PREEMPTED_FILE" ]; then
  echo "dist_train.sh: training stopped after saving a checkpoint (exit $PREEMPTED: preempted," \
    "resumable); continue with: bash tools/dist_train.sh $CONFIG $NPROC ${*:3} --resume" >&2
  exit $PREEMPTED
fi
exit "$status"
