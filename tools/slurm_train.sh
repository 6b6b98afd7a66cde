#!/usr/bin/env bash
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
# Training on a Slurm cluster with srun (mmdet's tools/slurm_train.sh).
#   GPUS=16 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]
# GPUS: total processes (default 8); GPUS_PER_NODE (8); CPUS_PER_TASK (5); SRUN_ARGS: extra srun
# options. PYTHON picks the interpreter (default: the project's .venv). Needs CUDA on the nodes.
#
# Time limits and preemption (docs/robustness.md): srun asks Slurm for SIGUSR1 SIGNAL_BEFORE_END
# seconds (default 120) before the time limit; on it, and on SIGTERM (preemption, scancel), the
# tasks finish the iteration, save its checkpoint once all agree, and exit. This script then exits
# with 75 (stopped after saving, resumable). Submitted as a batch job, from the repository root,
#   sbatch -p PARTITION -N 2 --ntasks-per-node=8 --gres=gpu:8 -t 24:00:00 \
#     tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [args...]
# (the #SBATCH lines above ask for SIGUSR1 to this script 120 s before the limit, which it
# forwards to srun, and allow requeueing), it also requeues the job (scontrol requeue; REQUEUE=0
# to skip), and the requeued job adds --resume by itself (SLURM_RESTART_COUNT > 0).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$ROOT/tools/train.py" ]; then  # sbatch runs a copy of this script from its spool
  ROOT=${SLURM_SUBMIT_DIR:-$PWD}
fi
if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
SIGNAL_BEFORE_END=${SIGNAL_BEFORE_END:-120}
PREEMPTED=75

EXTRA_ARGS=("${@:5}")
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [[ " ${EXTRA_ARGS[*]} " != *" --resume"* ]]; then
  echo "slurm_train.sh: restart ${SLURM_RESTART_COUNT} of job ${SLURM_JOB_ID:-?}: adding --resume" >&2
  EXTRA_ARGS+=(--resume)
fi

# the tasks may run on other nodes: the marker of a preempted run lives in the (shared) work dir,
# which tools/train.py creates
export DEFORMDETR_PREEMPTED_FILE="$WORK_DIR/.preempted.${HOSTNAME:-host}.$$"
rm -f "$DEFORMDETR_PREEMPTED_FILE"
trap 'rm -f "$DEFORMDETR_PREEMPTED_FILE"' EXIT

set -x
# SRUN_ARGS is split into words on purpose (several srun options in one variable)
# shellcheck disable=SC2086
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    --signal=USR1@"$SIGNAL_BEFORE_END" \
    $SRUN_ARGS \
    "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm \
    "${EXTRA_ARGS[@]}" &
SRUN=$!
set +x

forward() {  # the batch shell's signal ($1) to srun, which passes it to every task
  echo "slurm_train.sh: SIG$1 received; the tasks finish the iteration, save and stop" >&2
  kill -"$1" "$SRUN" 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT

status=0
while :; do
  status=0
  wait "$SRUN" || status=$?
  kill -0 "$SRUN" 2>/dev/null || break  # a trapped signal interrupted `wait`
done
# srun reports the highest exit status of its tasks (a task stopped by --kill-on-bad-exit after
# another exited with 75 counts as killed): the marker says whether the checkpoint was saved
if [ ! -e "$DEFORMDETR_PREEMPTED_FILE" ]; then
  exit "$status"
fi
echo "slurm_train.sh: training stopped after saving a checkpoint (exit $PREEMPTED: preempted," \
  "resumable)" >&2
if [ -n "${SLURM_JOB_ID:-}" ] && [ "${REQUEUE:-1}" = 1 ]; then
  echo "slurm_train.sh: requeueing job $SLURM_JOB_ID; it resumes from the checkpoint" >&2
  scontrol requeue "$SLURM_JOB_ID" ||
    echo "slurm_train.sh: scontrol requeue failed (only batch jobs can be requeued); resume" \
      "with the same command and --resume" >&2
else
  echo "slurm_train.sh: resume with the same command and --resume" >&2
fi
exit $PREEMPTED
