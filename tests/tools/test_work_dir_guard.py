"""tools/train.py around the runner (tools/train_guard.py), with real processes: a second run
into the work dir of a live one is refused before it touches anything; the lock of a killed run
is taken over; ``--resume`` of a finished run says so and trains nothing."""

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from tests.helpers.faults import MAX_ITERS, TrainingProcess, run_train, train_args
from tools.train_guard import finished_message


def _snapshot(folder: Path) -> dict:
    """What a second run could overwrite, create or delete: the entries of the work dir, and
    the first run's config copy and half-written checkpoint (its logs keep growing)."""
    return dict(
        entries=sorted(path.name for path in folder.iterdir()),
        files={
            path.name: (path.stat().st_mtime_ns, path.read_bytes())
            for path in folder.iterdir()
            if path.suffix in ('.py', '.writing')
        },
    )


@pytest.mark.slow
def test_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    work_dir = tmp_path / 'run'
    no_saves = ['train_cfg.max_iters=1000', 'default_hooks.checkpoint.interval=1000']
    with TrainingProcess.train(work_dir, *no_saves) as first:
        first.wait_for('Iter(train) [')
        # a save of the first run in progress: what the second run's clean-up would delete
        partial = work_dir / '.iter_1000.pth.writing'
        partial.write_bytes(b'\0' * 1000)
        before = _snapshot(work_dir)
        command = [sys.executable, 'tools/train.py', *train_args(work_dir, 'train_cfg.max_iters=2')]
        with TrainingProcess(command, tmp_path / 'second.log') as run:  # its own log file
            assert run.wait() == 1, run.output[-3000:]
            second = run.output
        assert first.process.poll() is None, first.output[-3000:]
        assert _snapshot(work_dir) == before  # nothing written, nothing deleted
        os.kill(first.process.pid, signal.SIGKILL)
        first.wait()
    assert (
        f'tools/train.py: error: The work dir {work_dir} is in use by another training run: '
        f'PID {first.process.pid} on host {socket.gethostname()}, started '
    ) in second
    assert 'touched nothing there' in second and 'Iter(train)' not in second

    third = run_train(work_dir, 'train_cfg.max_iters=2')  # log: run.log again (the first's)
    assert (
        f'Took over the lock {work_dir}/train.lock of a run that is gone '
        f'(PID {first.process.pid} on host'
    ) in third
    assert f'PID {first.process.pid} is not running on' in third
    assert 'Removed 1 incomplete file(s)' in third and not partial.exists()
    assert not (work_dir / 'train.lock').exists()


@pytest.mark.slow
def test_resume_of_a_finished_run_says_so(tmp_path, fault_reference):
    work_dir = tmp_path / 'finished'
    work_dir.mkdir()
    (work_dir / 'last_checkpoint').write_text(str(fault_reference / f'iter_{MAX_ITERS}.pth'))
    output = run_train(work_dir, resume='auto')
    assert (
        f'tools/train.py: Nothing to train: {fault_reference}/iter_{MAX_ITERS}.pth is the '
        f'checkpoint of iteration {MAX_ITERS}, and the schedule ends at iteration {MAX_ITERS} '
        '(train_cfg.max_iters)'
    ) in output
    assert 'Iter(train)' not in output and 'resumed' not in output
    assert sorted(path.name for path in work_dir.iterdir()) == ['last_checkpoint']


@pytest.mark.parametrize(
    'train_cfg, meta, finished',
    [
        (dict(type='EpochBasedTrainLoop', max_epochs=12), dict(epoch=12, iter=1200), True),
        (dict(type='EpochBasedTrainLoop', max_epochs=12), dict(epoch=11, iter=1190), False),
        (dict(by_epoch=True, max_epochs=12), dict(epoch=12, iter=1200), True),
        (dict(type='IterBasedTrainLoop', max_iters=90), dict(epoch=0, iter=90), True),
        (dict(by_epoch=False, max_iters=90), dict(epoch=0, iter=60), False),
        (dict(type='MyLoop', max_iters=90), dict(epoch=0, iter=90), False),  # unknown: let it run
    ],
)
def test_finished_message(tmp_path, train_cfg, meta, finished):
    checkpoint = tmp_path / 'last.pth'
    torch.save(dict(meta=meta, state_dict={'w': torch.zeros(2)}), checkpoint)
    cfg = Config(dict(train_cfg=train_cfg, work_dir=str(tmp_path)))
    message = finished_message(cfg, str(checkpoint))
    assert (message is not None) == finished
    if finished:
        unit, key = ('epoch', 'epoch') if 'max_epochs' in train_cfg else ('iteration', 'iter')
        assert f'is the checkpoint of {unit} {meta[key]}, and the schedule ends' in message
