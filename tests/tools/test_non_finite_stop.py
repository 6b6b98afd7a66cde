"""tools/train.py stops at the iteration where a loss term or the gradient norm turns NaN / Inf,
names it, and keeps the last good checkpoint (every config has StopOnNonFiniteHook). A checkpoint
is saved every iteration, the newest only (max_keep_ckpts=1): the setting in which a NaN
checkpoint used to replace the last good one."""

import re
from pathlib import Path

import pytest

from mmdet_deformdetr.engine.finite_check import non_finite_tensors
from tests.helpers.faults import MAX_ITERS, load, run_train

pytestmark = pytest.mark.slow

EVERY_ITERATION = 'default_hooks.checkpoint.interval=1'


def _stop_message(output: str) -> str:
    lines = [
        line
        for line in output.splitlines()
        if ' - ERROR - ' in line and 'Training stopped at' in line
    ]
    assert len(lines) == 1, output[-4000:]
    return lines[0]


def _assert_last_good_checkpoint_kept(work_dir: Path, iteration: int, message: str) -> None:
    good = work_dir / f'iter_{iteration}.pth'
    assert sorted(path.name for path in work_dir.glob('*.pth')) == [good.name]
    assert (work_dir / 'last_checkpoint').read_text() == str(good)
    checkpoint = load(good)
    assert checkpoint['meta']['iter'] == iteration
    assert non_finite_tensors(checkpoint['state_dict'].items()) == []
    assert (
        f'The last good checkpoint, {good}, is kept (work_dir/last_checkpoint names it; '
        f'tools/train.py --resume continues from it)'
    ) in message


def test_nan_in_one_loss_term_stops_at_that_iteration(tmp_path):
    work_dir = tmp_path / 'run'
    output = run_train(
        work_dir,
        EVERY_ITERATION,
        'custom_hooks.1.at_iter=3',
        'custom_hooks.1.term=loss_bbox',
        expect_rc=1,
    )
    message = _stop_message(output)
    assert (
        'Training stopped at iteration 3: not finite: loss=nan, loss_bbox=nan, grad_norm=nan.'
        in message
    )
    assert 'loss_cls' not in message and 'loss_iou' not in message  # finite: not named
    assert 'NonFiniteTrainingError' in output
    assert f'Iter(train) [4/{MAX_ITERS}]' not in output
    _assert_last_good_checkpoint_kept(work_dir, 2, message)


def test_huge_learning_rate_stops_before_nan_weights_are_saved(tmp_path):
    work_dir = tmp_path / 'run'
    output = run_train(work_dir, EVERY_ITERATION, 'optim_wrapper.optimizer.lr=1e6', expect_rc=1)
    message = _stop_message(output)
    stopped = int(re.search(r'Training stopped at iteration (\d+)', message).group(1))
    logged = re.findall(rf'Iter\(train\) \[(\d+)/{MAX_ITERS}\](.*)', output)  # (iter, values)
    first_nan = next(int(iteration) for iteration, values in logged if 'nan' in values)
    # the iteration logged last (LoggerHook runs first) is the first with NaN values
    assert stopped == first_nan == int(logged[-1][0]) >= 2, output[-4000:]
    assert 'grad_norm=nan' in message
    # before the hook, the next iteration died in the matcher on the NaN weights
    assert 'matrix contains invalid numeric entries' not in output
    _assert_last_good_checkpoint_kept(work_dir, stopped - 1, message)
