"""tools/train.py killed with SIGKILL at a moment it does not choose, then ``--resume``: training
continues from the last complete checkpoint and ends with exactly the weights, optimizer state and
lr schedule of an uninterrupted run; and ``--resume`` with nothing to resume from is an error."""

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
from mmengine.config import Config

from tests.helpers.faults import (
    MAX_ITERS,
    TrainingProcess,
    load,
    run_train,
    training_state_differences,
)
from tools.tool_common import check_resume


def _saves_logged(output: str):
    return [int(step) for step in re.findall(r'Saving checkpoint at (\d+) iterations', output)]


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_continues_exactly(tmp_path, fault_reference):
    delay = random.Random().uniform(0.0, 2.0)  # after the first save: iterations 4 to 8
    work_dir = tmp_path / 'run'
    with TrainingProcess.train(work_dir) as run:
        # iteration 3 logged: the checkpoint of iteration 2 is complete
        run.wait_for(f'Iter(train) [3/{MAX_ITERS}]')
        time.sleep(delay)
        assert run.process.poll() is None, f'the run ended before the kill ({delay:.2f} s)'
        os.kill(run.process.pid, signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
        killed = run.output
    context = f'killed {delay:.2f} s after iteration 3:\n{killed[-3000:]}'

    saves = _saves_logged(killed)
    resumed_from = load(Path((work_dir / 'last_checkpoint').read_text()))['meta']['iter']
    # the newest save whose next iteration was logged had finished; the newest one logged may
    # have been cut off by the kill, and then the one before it is the last complete one
    finished = [step for step in saves if f'Iter(train) [{step + 1}/{MAX_ITERS}]' in killed]
    assert resumed_from in saves[-2:] and resumed_from >= max(finished, default=2), context
    # no complete checkpoint newer than the one last_checkpoint names (max_keep_ckpts=1)
    assert sorted(path.name for path in work_dir.glob('iter_*.pth')) == [
        f'iter_{resumed_from}.pth'
    ], context

    resumed = run_train(work_dir, resume='auto')
    assert f'resumed epoch: 0, iter: {resumed_from}' in resumed, context
    assert f'Advance dataloader {resumed_from} steps' in resumed  # the same data order
    logged = [int(i) for i in re.findall(rf'Iter\(train\) \[\s*(\d+)/{MAX_ITERS}\]', resumed)]
    assert logged == list(range(resumed_from + 1, MAX_ITERS + 1)), context
    # bitwise: weights, AdamW state, lr schedule (step at 5) and iteration
    assert (
        training_state_differences(
            work_dir / f'iter_{MAX_ITERS}.pth', fault_reference / f'iter_{MAX_ITERS}.pth'
        )
        == []
    ), context


def _resume_cfg(work_dir: Path, load_from=None) -> Config:
    return Config(dict(resume=True, load_from=load_from, work_dir=str(work_dir)))


def test_resume_without_a_checkpoint_to_resume_from(tmp_path):
    """The lookup is mmdet_deformdetr.checkpoint.find_resume_checkpoint (its messages are tested
    in tests/checkpoint); check_resume raises it before anything is built."""
    from mmdet_deformdetr.checkpoint import NoCheckpointToResumeError

    (tmp_path / 'iter_2.pth').write_bytes(b'')
    with pytest.raises(NoCheckpointToResumeError) as error:
        check_resume(_resume_cfg(tmp_path))
    assert isinstance(error.value, FileNotFoundError)  # what tools/train.py reports
    assert f'{tmp_path} has no last_checkpoint file' in str(error.value)
    assert f'--resume {tmp_path}/iter_2.pth' in str(error.value)


@pytest.mark.parametrize('pointer', ['{work_dir}/iter_2.pth', 'iter_2.pth'])
def test_resume_from_what_last_checkpoint_names(tmp_path, pointer):
    (tmp_path / 'iter_2.pth').write_bytes(b'')
    (tmp_path / 'last_checkpoint').write_text(pointer.format(work_dir=tmp_path))
    cfg = _resume_cfg(tmp_path)
    check_resume(cfg)
    # mmengine reads last_checkpoint itself; a name relative to the work dir is made explicit
    assert cfg.load_from == (None if pointer.startswith('{') else str(tmp_path / 'iter_2.pth'))


def test_resume_path_that_does_not_exist(tmp_path):
    (tmp_path / 'iter_2.pth').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match='no such checkpoint file') as error:
        check_resume(_resume_cfg(tmp_path, load_from=str(tmp_path / 'epoch_3.pth')))
    assert str(error.value).startswith(f'--resume {tmp_path}/epoch_3.pth: ')
    assert f'Checkpoints in the work dir {tmp_path}: iter_2.pth' in str(error.value)


@pytest.mark.parametrize('load_from', ['iter_2.pth', 's3://bucket/iter_2.pth'])
def test_resume_path_that_exists_or_is_remote_passes(tmp_path, load_from):
    (tmp_path / 'iter_2.pth').write_bytes(b'')
    if load_from == 'iter_2.pth':
        load_from = str(tmp_path / load_from)
    check_resume(_resume_cfg(tmp_path, load_from))  # remote paths are left to their loaders
    check_resume(Config(dict(resume=False, work_dir=str(tmp_path / 'empty'))))


@pytest.mark.slow
def test_train_py_resume_in_an_empty_work_dir_fails_before_training(tmp_path):
    work_dir = tmp_path / 'run'
    output = run_train(work_dir, expect_rc=1, resume='auto')
    assert (
        'tools/train.py: error: --resume found nothing to resume from: '
        f'{work_dir} has no last_checkpoint file'
    ) in output
    assert 'Traceback' not in output and 'Iter(train)' not in output
