"""One rank of a 2-process ``tools/dist_train.sh`` run (CPU, gloo) dies: the whole job ends,
non-zero, within a bounded time, and ``--resume`` continues from the last checkpoint. A rank that
is stuck rather than dead (torchrun cannot see it) is bounded by the gloo timeout
(``env_cfg.dist_cfg.timeout``)."""

import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

from tests.helpers.dist_workers import all_reduce_with_a_stuck_peer
from tests.helpers.faults import MAX_ITERS, TINY_FAULTS_CONFIG, TrainingProcess, load, train_args
from tests.helpers.tools import free_port

pytestmark = [pytest.mark.slow, pytest.mark.dist]


def _workers(launcher: int) -> Dict[int, int]:
    """rank -> pid of the processes torchrun started under ``launcher`` (tools/dist_train.sh,
    which runs torchrun as its child), from /proc."""
    parents, ranks = {}, {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as file:
                parents[int(entry)] = int(file.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{entry}/environ', 'rb') as file:
                env = dict(item.split(b'=', 1) for item in file.read().split(b'\0') if b'=' in item)
        except OSError:  # a process that ended meanwhile
            continue
        if b'RANK' in env:
            ranks[int(entry)] = int(env[b'RANK'])
    return {
        rank: pid
        for pid, rank in ranks.items()
        if launcher in (parents.get(pid), parents.get(parents.get(pid)))
    }


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as file:
            return file.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def _dist_train(work_dir, log_name: str, **kwargs) -> TrainingProcess:
    command = [
        'bash',
        'tools/dist_train.sh',
        str(TINY_FAULTS_CONFIG),
        '2',
        *train_args(work_dir, **kwargs)[1:],
    ]
    return TrainingProcess(
        command, work_dir.parent / log_name, env=dict(PYTHON=sys.executable, PORT=str(free_port()))
    )


@pytest.fixture(scope='module')
def killed_dist_run(tmp_path_factory) -> dict:
    """A 2-process run whose rank 1 is SIGKILLed after iteration 3 was logged (the checkpoint of
    iteration 2 complete): its work dir, output, worker pids and the seconds until it ended."""
    work_dir = tmp_path_factory.mktemp('dist_faults') / 'run'
    with _dist_train(work_dir, 'killed.log') as run:
        run.wait_for(f'Iter(train) [3/{MAX_ITERS}]')
        workers = _workers(run.process.pid)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[1], signal.SIGKILL)
        killed_at = time.monotonic()
        returncode = run.wait(timeout=120)
        return dict(
            work_dir=work_dir,
            returncode=returncode,
            output=run.output,
            workers=workers,
            seconds=time.monotonic() - killed_at,
        )


def test_killed_rank_ends_the_whole_job(killed_dist_run):
    run = killed_dist_run
    assert run['returncode'] != 0 and run['seconds'] < 60, (
        run['returncode'],
        run['seconds'],
        run['output'][-3000:],
    )
    # torchrun names the rank that died and stops the other one
    assert f'exitcode  : -9 (pid: {run["workers"][1]})' in run['output']
    assert 'Signal 9 (SIGKILL) received by PID' in run['output']
    assert not _alive(run['workers'][0])


def test_resume_after_a_killed_rank(killed_dist_run):
    work_dir = killed_dist_run['work_dir']
    resumed_from = load(Path((work_dir / 'last_checkpoint').read_text()))['meta']['iter']
    assert resumed_from >= 2
    with _dist_train(work_dir, 'resumed.log', resume='auto') as run:
        assert run.wait(timeout=240) == 0, run.output[-4000:]
        output = run.output
    assert f'resumed epoch: 0, iter: {resumed_from}' in output
    assert 'Distributed training: True' in output
    assert f'Iter(train) [{MAX_ITERS}/{MAX_ITERS}]' in output
    assert load(work_dir / f'iter_{MAX_ITERS}.pth')['meta']['iter'] == MAX_ITERS


def test_stuck_rank_is_bounded_by_the_gloo_timeout():
    context = multiprocessing.get_context('spawn')
    results = context.Queue()
    port, timeout_s = free_port(), 3.0
    processes = [
        context.Process(target=all_reduce_with_a_stuck_peer, args=(rank, port, timeout_s, results))
        for rank in (0, 1)
    ]
    for process in processes:
        process.start()
    try:
        name, message, seconds = results.get(timeout=120)
    finally:
        for process in processes:
            process.kill()
            process.join()
    assert name != 'returned', 'the all-reduce returned without its peer'
    assert timeout_s * 0.9 <= seconds < timeout_s + 20, (name, message, seconds)
