"""A real training process signalled at a moment the test does not choose, with no periodic
checkpoint due (``interval=100``: only the stop's save and the last one): it finishes the
iteration in flight, saves it, exits with 75, and ``--resume`` ends bitwise equal to an
uninterrupted run. One process (tools/train.py), two gloo ranks (tools/dist_train.sh, one rank
signalled alone, then the script itself), and tools/slurm_train.sh with stand-ins for srun and
scontrol."""

import os
import random
import re
import signal
import stat
import sys
import time
from pathlib import Path
from typing import List

import pytest

from tests.helpers.faults import (
    MAX_ITERS,
    TINY_FAULTS_CONFIG,
    TrainingProcess,
    load,
    run_train,
    train_args,
    training_state_differences,
)
from tests.helpers.tools import free_port

pytestmark = pytest.mark.slow

PREEMPTED = 75
NO_PERIODIC_SAVE = 'default_hooks.checkpoint.interval=100'


def logged_iterations(output: str) -> List[int]:
    return [int(i) for i in re.findall(rf'Iter\(train\) \[\s*(\d+)/{MAX_ITERS}\]', output)]


def unchosen_delay(run: TrainingProcess, first: int) -> float:
    """Seconds to wait after iteration ``first + 1`` was logged: a random fraction of two
    iterations as this machine runs them (timed between iterations ``first`` and ``first + 1``),
    so the signal lands anywhere in the next iterations but before the run's end."""
    run.wait_for(f'Iter(train) [{first}/{MAX_ITERS}]')
    start = time.monotonic()
    run.wait_for(f'Iter(train) [{first + 1}/{MAX_ITERS}]')
    return random.Random().uniform(0.0, 2.0 * (time.monotonic() - start))


def check_stopped_run(work_dir: Path, output: str, returncode: int) -> int:
    """The stopped run's checkpoint holds its last logged iteration; that iteration."""
    assert returncode == PREEMPTED, output[-4000:]
    stopped_at = logged_iterations(output)[-1]
    assert stopped_at < MAX_ITERS, output[-3000:]
    assert f'Training stopped after iteration {stopped_at} ' in output, output[-3000:]
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / f'iter_{stopped_at}.pth')
    assert load(work_dir / f'iter_{stopped_at}.pth')['meta']['iter'] == stopped_at
    assert not list(work_dir.glob('.*.writing')) and not (work_dir / 'train.lock').exists()
    return stopped_at


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGUSR1], ids=['SIGTERM', 'SIGUSR1'])
def test_signal_saves_the_iteration_in_flight_and_resume_is_exact(
    tmp_path, fault_reference, signum
):
    work_dir = tmp_path / 'run'
    with TrainingProcess.train(work_dir, NO_PERIODIC_SAVE) as run:
        time.sleep(unchosen_delay(run, 1))
        assert run.process.poll() is None, run.output[-3000:]
        os.kill(run.process.pid, signum)
        if signum == signal.SIGTERM:  # a second signal while the checkpoint is being saved
            run.wait_for('(stop requested)')
            os.kill(run.process.pid, signal.SIGINT)
        returncode = run.wait()
        output = run.output
    stopped_at = check_stopped_run(work_dir, output, returncode)
    name = signal.Signals(signum).name
    assert f'[PreemptionHook] {name} received: finishing the current iteration' in output
    if signum == signal.SIGTERM:
        assert '[PreemptionHook] SIGINT received: already stopping; ignored' in output
    assert 'Traceback' not in output

    resumed = run_train(work_dir, resume='auto')
    assert f'resumed epoch: 0, iter: {stopped_at}' in resumed
    assert logged_iterations(resumed) == list(range(stopped_at + 1, MAX_ITERS + 1))
    assert (
        training_state_differences(
            work_dir / f'iter_{MAX_ITERS}.pth', fault_reference / f'iter_{MAX_ITERS}.pth'
        )
        == []
    )


# -- two gloo ranks -------------------------------------------------------------------------------


def _dist_train(work_dir: Path, log_name: str, *options: str, **kwargs) -> TrainingProcess:
    command = ['bash', 'tools/dist_train.sh', str(TINY_FAULTS_CONFIG), '2']
    command += train_args(work_dir, *options, **kwargs)[1:]
    env = dict(PYTHON=sys.executable, PORT=str(free_port()))
    return TrainingProcess(command, work_dir.parent / log_name, env=env)


def _children(pid: int) -> dict:
    """pid -> environment of the processes whose parent is ``pid`` (from /proc)."""
    found = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as file:
                parent = int(file.read().rsplit(')', 1)[1].split()[1])
            if parent != pid:
                continue
            with open(f'/proc/{entry}/environ', 'rb') as file:
                items = file.read().split(b'\0')
        except OSError:  # ended meanwhile
            continue
        found[int(entry)] = dict(item.split(b'=', 1) for item in items if b'=' in item)
    return found


def _rank_pids(script_pid: int) -> dict:
    """rank -> pid of the ranks under tools/dist_train.sh (bash -> torchrun -> ranks)."""
    for _ in range(200):
        for launcher in _children(script_pid):
            ranks = {
                int(env[b'RANK']): pid for pid, env in _children(launcher).items() if b'RANK' in env
            }
            if len(ranks) == 2:
                return ranks
        time.sleep(0.1)
    raise AssertionError('the two ranks of tools/dist_train.sh were not found')


@pytest.mark.dist
def test_two_ranks_agree_on_one_signalled_rank_and_resume_exactly(tmp_path):
    reference = tmp_path / 'reference'
    with _dist_train(reference, 'reference.log') as run:
        assert run.wait(timeout=300) == 0, run.output[-4000:]

    # SIGUSR1 to rank 1 alone: rank 0 saves, both stop after the same iteration
    work_dir = tmp_path / 'run'
    with _dist_train(work_dir, 'stopped.log', NO_PERIODIC_SAVE) as run:
        delay = unchosen_delay(run, 1)
        ranks = _rank_pids(run.process.pid)
        time.sleep(delay)
        os.kill(ranks[1], signal.SIGUSR1)
        returncode = run.wait(timeout=300)
        output = run.output
    stopped_at = check_stopped_run(work_dir, output, returncode)
    assert '(another rank received a stop signal)' in output  # rank 0's log
    assert 'dist_train.sh: training stopped after saving a checkpoint (exit 75' in output

    # SIGTERM to tools/dist_train.sh itself (as a scheduler would): passed on through torchrun
    stopped_again = stopped_at
    if stopped_at + 2 < MAX_ITERS:  # room for one more stop before the end
        with _dist_train(work_dir, 'stopped_again.log', NO_PERIODIC_SAVE, resume='auto') as run:
            run.wait_for(f'Iter(train) [{stopped_at + 1}/{MAX_ITERS}]')
            time.sleep(random.Random().uniform(0.0, 0.5))
            os.kill(run.process.pid, signal.SIGTERM)
            returncode = run.wait(timeout=300)
            output = run.output
        assert f'resumed epoch: 0, iter: {stopped_at}' in output
        assert 'dist_train.sh: SIGTERM received' in output
        stopped_again = check_stopped_run(work_dir, output, returncode)

    with _dist_train(work_dir, 'resumed.log', resume='auto') as run:
        assert run.wait(timeout=300) == 0, run.output[-4000:]
        output = run.output
    assert f'resumed epoch: 0, iter: {stopped_again}' in output
    final = f'iter_{MAX_ITERS}.pth'
    assert training_state_differences(work_dir / final, reference / final) == []


# -- tools/slurm_train.sh -------------------------------------------------------------------------

FAKE_SRUN = """#!/usr/bin/env bash
# stand-in srun: records its arguments, runs the task (from the interpreter on) as one process
# with --launcher=none, passes USR1 / TERM / INT on to it, exits with its status
echo "srun $*" >> "$FAKE_SLURM_LOG"
task=()
for word in "$@"; do
  if [ ${#task[@]} -gt 0 ] || [ "$word" = "$PYTHON" ]; then
    [ "$word" = --launcher=slurm ] && word=--launcher=none
    task+=("$word")
  fi
done
"${task[@]}" &
child=$!
trap 'kill -USR1 $child' USR1
trap 'kill -TERM $child' TERM
trap 'kill -INT $child' INT
while :; do
  status=0
  wait $child || status=$?
  kill -0 $child 2>/dev/null || break
done
exit $status
"""


@pytest.fixture
def fake_slurm(tmp_path: Path) -> dict:
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name, text in [
        ('srun', FAKE_SRUN),
        ('scontrol', '#!/usr/bin/env bash\necho "scontrol $*" >> "$FAKE_SLURM_LOG"\n'),
    ]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    return dict(
        PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
        PYTHON=sys.executable,
        FAKE_SLURM_LOG=str(tmp_path / 'slurm.log'),
        SLURM_JOB_ID='4242',
        GPUS='1',
        GPUS_PER_NODE='1',
    )


def _slurm_train(work_dir: Path, log_name: str, env: dict, *options: str) -> TrainingProcess:
    args = train_args(work_dir, *options)
    command = ['bash', 'tools/slurm_train.sh', 'gpu', 'deformdetr', args[0], str(work_dir)]
    command += args[3:]  # --cfg-options ... (the work dir is the script's fourth argument)
    work_dir.mkdir(parents=True, exist_ok=True)
    return TrainingProcess(command, work_dir.parent / log_name, env=env)


def test_slurm_train_requeues_on_the_warning_signal_and_the_job_resumes(
    tmp_path, fault_reference, fake_slurm
):
    work_dir = tmp_path / 'run'
    # SIGUSR1 to the batch shell (what sbatch --signal=B:USR1@120 does): forwarded to the task
    with _slurm_train(work_dir, 'stopped.log', fake_slurm, NO_PERIODIC_SAVE) as run:
        time.sleep(unchosen_delay(run, 1))
        os.kill(run.process.pid, signal.SIGUSR1)
        returncode = run.wait()
        output = run.output
    stopped_at = check_stopped_run(work_dir, output, returncode)
    calls = Path(fake_slurm['FAKE_SLURM_LOG']).read_text().splitlines()
    assert '--signal=USR1@120' in calls[0].split() and calls[1:] == ['scontrol requeue 4242']
    assert 'slurm_train.sh: requeueing job 4242' in output
    assert not list(work_dir.glob('.preempted.*'))

    # the requeued job: same command, SLURM_RESTART_COUNT=1
    with _slurm_train(work_dir, 'requeued.log', dict(fake_slurm, SLURM_RESTART_COUNT='1')) as run:
        returncode = run.wait()
        output = run.output
    assert returncode == 0, output[-4000:]
    assert 'restart 1 of job 4242: adding --resume' in output
    assert f'resumed epoch: 0, iter: {stopped_at}' in output
    assert (
        training_state_differences(
            work_dir / f'iter_{MAX_ITERS}.pth', fault_reference / f'iter_{MAX_ITERS}.pth'
        )
        == []
    )
