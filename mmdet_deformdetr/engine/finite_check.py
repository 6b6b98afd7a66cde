"""Stop at the first non-finite loss term, gradient norm or weight: ``StopOnNonFiniteHook``.

Why not mmdet's ``CheckInvalidLossHook``: it looks at the total loss only, every 50 iterations by
default, and as an ``assert`` (gone under ``python -O``). Deformable DETR with too high a learning
rate shows the failure this hook is for (probed on the tiny test config, lr 1e6): iteration 2 had
``grad_norm: nan`` and every loss NaN, the checkpoint of iteration 2 (NaN weights) replaced the
good one, and iteration 3 died inside the Hungarian matcher with scipy's ``matrix contains invalid
numeric entries``, which names neither the cause nor the iteration.

This hook checks, after every training iteration and before the checkpoint hook (priority
``LOW`` runs before ``CheckpointHook``'s ``VERY_LOW`` and after ``LoggerHook``, so a logged
iteration is in the log first):

- every loss term the model returns (``loss``, ``loss_cls``, ``d0.loss_bbox``, ``enc_loss_iou``
  ...; one host sync for all of them);
- the gradient norm, when the optimizer wrapper clips gradients (``clip_grad``: every config
  of this project) and so records ``train/grad_norm``: one non-finite gradient makes the norm
  non-finite. Without it the weights are checked instead, every iteration; with fp16 loss
  scaling (``AmpOptimWrapper``) a non-finite norm is an overflow whose step the scaler skips, so
  the weights are checked then too, instead of stopping;
- the weights of any checkpoint about to be written (``before_save_checkpoint``), whichever hook
  saves it: non-finite weights are never written over good ones.

It raises ``NonFiniteTrainingError`` naming the iteration and the terms; with
``AtomicCheckpointHook`` the last good checkpoint stays where ``last_checkpoint`` says. Under DDP
the gradients are all-reduced, so every rank sees the same non-finite norm and stops at the same
iteration.
"""

import math
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from mmengine.hooks import Hook

from .atomic_checkpoint import last_checkpoint_of


class NonFiniteTrainingError(RuntimeError):
    """A loss term, the gradient norm or a weight became NaN or Inf during training."""


def _non_finite_scalars(values: Dict[str, object]) -> List[Tuple[str, float]]:
    """(name, value) of the scalar entries (tensors, numbers) that are not finite; one host
    sync for all the tensors."""
    numbers = {
        name: float(value) for name, value in values.items() if isinstance(value, (int, float))
    }
    tensors = {name: value for name, value in values.items() if isinstance(value, torch.Tensor)}
    if tensors:
        stacked = torch.stack([value.detach().float().sum() for value in tensors.values()])
        numbers.update(zip(tensors, stacked.tolist()))
    return [(name, value) for name, value in numbers.items() if not math.isfinite(value)]


def non_finite_tensors(named: Iterable[Tuple[str, torch.Tensor]]) -> List[str]:
    """Names of the floating-point tensors holding a NaN or Inf.

    ``(t * 0).sum()`` is NaN exactly when ``t`` holds a NaN or an Inf (finite * 0 = 0,
    inf * 0 = nan), without the overflow a plain sum of large finite values could have; all
    tensors are reduced before the one host sync.
    """
    named = [
        (name, tensor)
        for name, tensor in named
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
    ]
    if not named:
        return []
    sums = torch.stack([(tensor.detach() * 0).sum().float().cpu() for _, tensor in named])
    bad = (~torch.isfinite(sums)).tolist()
    return [name for (name, _), is_bad in zip(named, bad) if is_bad]


class StopOnNonFiniteHook(Hook):
    """Raise ``NonFiniteTrainingError`` at the first iteration with a non-finite loss term,
    gradient norm or weight, before any checkpoint of it is written (see the module docstring).

    Args:
        check_weights (str): ``'auto'`` checks the weights every iteration only when no gradient
            norm is recorded (no ``clip_grad``); ``'always'`` every iteration (costs a pass over
            the weights, noticeable on a CPU);
            checkpoints are checked in every mode.
    """

    priority = 'LOW'

    def __init__(self, check_weights: str = 'auto') -> None:
        if check_weights not in ('auto', 'always'):
            raise ValueError(f"check_weights must be 'auto' or 'always', got {check_weights!r}")
        self.check_weights = check_weights

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs: Optional[Dict[str, object]] = None
    ) -> None:
        bad = [f'{name}={value}' for name, value in _non_finite_scalars(dict(outputs or {}))]
        grad_norm = runner.message_hub.log_scalars.get('train/grad_norm')
        trust_grad_norm = grad_norm is not None and self.check_weights == 'auto'
        if grad_norm is not None and not math.isfinite(float(grad_norm.current())):
            if hasattr(runner.optim_wrapper, 'loss_scaler'):
                # fp16 with loss scaling (AmpOptimWrapper): an overflow is expected now and then;
                # the scaler skips that step and lowers the scale, so only the weights can tell
                trust_grad_norm = False
            else:
                bad.append(f'grad_norm={float(grad_norm.current())}')
        if not bad and not trust_grad_norm:
            weights = non_finite_tensors(_unwrap(runner.model).named_parameters())
            if weights:
                bad.append(f'weights {_listed(weights)}')
        if bad:
            self._stop(runner, f'not finite: {", ".join(bad)}')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        weights = non_finite_tensors(checkpoint.get('state_dict', {}).items())
        if weights:
            self._stop(
                runner,
                f'the checkpoint about to be saved has non-finite weights {_listed(weights)}',
            )

    def _stop(self, runner, what: str) -> None:
        where = f'iteration {runner.iter + 1}'
        if getattr(runner.train_loop, 'max_epochs', 1) > 1:
            where = f'epoch {runner.epoch + 1}, {where} (counted over all epochs)'
        last = last_checkpoint_of(runner.work_dir)
        kept = (
            f'The last good checkpoint, {last}, is kept (work_dir/last_checkpoint names it; '
            f'tools/train.py --resume continues from it).'
            if last
            else 'No checkpoint had been saved yet.'
        )
        message = (
            f'Training stopped at {where}: {what}. Nothing of this iteration was saved. {kept} '
            f'Usually the learning rate is too high for the batch size, or an annotation is '
            f'degenerate: lower optim_wrapper.optimizer.lr or check the data before resuming.'
        )
        runner.logger.error(message)
        raise NonFiniteTrainingError(message)


def _listed(names: List[str], most: int = 5) -> str:
    return ', '.join(names[:most]) + (f' ... ({len(names)} in all)' if len(names) > most else '')


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, 'module', model)  # DDP wrappers
