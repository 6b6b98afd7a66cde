"""StopOnNonFiniteHook on a stand-in runner: which values stop training and what the message says.
Real runs (a NaN loss term, a huge learning rate) are in tests/tools/test_non_finite_stop.py."""

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub

from mmdet_deformdetr.engine import NonFiniteTrainingError, StopOnNonFiniteHook
from mmdet_deformdetr.engine.finite_check import non_finite_tensors

NAN, INF = float('nan'), float('inf')


def _runner(tmp_path: Path, grad_norm=None, weight: float = 1.0) -> SimpleNamespace:
    hub = MessageHub(name=f'finite_check_{tmp_path.name}')
    if grad_norm is not None:
        hub.update_scalar('train/grad_norm', grad_norm)
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(weight)
    return SimpleNamespace(
        message_hub=hub,
        model=model,
        iter=6,
        epoch=0,
        work_dir=str(tmp_path),
        train_loop=SimpleNamespace(max_epochs=1),
        optim_wrapper=object(),
        logger=logging.getLogger('finite_check_test'),
    )


def _losses(**values: float) -> dict:
    return {name: torch.tensor(value) for name, value in values.items()}


@pytest.mark.parametrize(
    'outputs, grad_norm, weight, named',
    [
        (
            _losses(loss=NAN, loss_cls=1.0, **{'d0.loss_bbox': NAN}),
            3.0,
            1.0,
            'not finite: loss=nan, d0.loss_bbox=nan.',
        ),
        (_losses(loss=1.0, enc_loss_iou=INF), None, 1.0, 'not finite: enc_loss_iou=inf.'),
        (_losses(loss=1.0), NAN, 1.0, 'not finite: grad_norm=nan.'),
        (_losses(loss=1.0), None, NAN, 'not finite: weights weight.'),  # no clip_grad: weights
    ],
)
def test_non_finite_values_stop_and_are_named(tmp_path, outputs, grad_norm, weight, named):
    runner = _runner(tmp_path, grad_norm, weight)
    with pytest.raises(NonFiniteTrainingError) as error:
        StopOnNonFiniteHook().after_train_iter(runner, 0, outputs=outputs)
    assert str(error.value).startswith(f'Training stopped at iteration 7: {named}')
    assert 'No checkpoint had been saved yet.' in str(error.value)


def test_finite_values_pass_and_weights_are_checked_per_mode(tmp_path):
    finite = _losses(loss=2.0, loss_cls=1.0, loss_bbox=1.0)
    StopOnNonFiniteHook().after_train_iter(_runner(tmp_path, grad_norm=5.0), 0, outputs=finite)
    # with a finite gradient norm, 'auto' trusts it; 'always' also checks the weights
    with_nan_weights = _runner(tmp_path, grad_norm=5.0, weight=NAN)
    StopOnNonFiniteHook().after_train_iter(with_nan_weights, 0, outputs=finite)
    with pytest.raises(NonFiniteTrainingError, match='weights weight'):
        StopOnNonFiniteHook('always').after_train_iter(with_nan_weights, 0, outputs=finite)
    with pytest.raises(ValueError, match="'auto' or 'always'"):
        StopOnNonFiniteHook('sometimes')


def test_fp16_overflow_skipped_by_the_loss_scaler_is_not_a_stop(tmp_path):
    """AmpOptimWrapper: an inf gradient norm means the scaler skipped the step; the weights
    decide."""
    finite = _losses(loss=2.0)
    overflow = _runner(tmp_path, grad_norm=INF)
    overflow.optim_wrapper = SimpleNamespace(loss_scaler=object())
    StopOnNonFiniteHook().after_train_iter(overflow, 0, outputs=finite)
    overflow.model.weight.data.fill_(NAN)
    with pytest.raises(NonFiniteTrainingError, match='not finite: weights weight'):
        StopOnNonFiniteHook().after_train_iter(overflow, 0, outputs=finite)


def test_checkpoint_with_non_finite_weights_is_not_saved(tmp_path):
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_3.pth'))
    runner = _runner(tmp_path)
    runner.train_loop.max_epochs, runner.epoch = 50, 3
    state_dict = {'a': torch.ones(3), 'b': torch.tensor([1.0, INF]), 'n': torch.tensor([1, 2])}
    with pytest.raises(NonFiniteTrainingError) as error:
        StopOnNonFiniteHook().before_save_checkpoint(runner, dict(state_dict=state_dict))
    message = str(error.value)
    assert message.startswith(
        'Training stopped at epoch 4, iteration 7 (counted over all '
        'epochs): the checkpoint about to be saved has non-finite '
        'weights b.'
    )
    assert f'The last good checkpoint, {tmp_path}/epoch_3.pth, is kept' in message
    StopOnNonFiniteHook().before_save_checkpoint(runner, dict(state_dict={'a': torch.ones(2)}))


def test_non_finite_tensors():
    named = [
        ('nan', torch.tensor([0.0, NAN])),
        ('inf', torch.tensor([-INF])),
        ('huge', torch.full((1000,), 3e38)),  # finite, although its sum overflows
        ('ints', torch.tensor([1, 2])),
        ('fine', torch.zeros(2, 2)),
    ]
    assert non_finite_tensors(named) == ['nan', 'inf']
    assert non_finite_tensors([]) == []
