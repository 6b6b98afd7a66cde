"""``ValRoundLogProcessor``: mmengine's ``LogProcessor`` whose json log of an iteration-based run
groups its lines the way mmdet's ``analyze_logs.py`` reads them.

Why: ``analyze_logs.py plot_curve --keys bbox_mAP`` (the key without its ``coco/`` prefix: the
tool keeps the part after the last ``/``) files every line of the json log under the ``epoch``
of the lines before it and plots one mAP point per ``epoch``. An iteration-based run
(``IterBasedTrainLoop``, the demo) logs no ``epoch``: all its evaluations land in one group, and
the plot fails ("x and y must have same first dimension").

What changes: in an iteration-based run with validation every ``val_interval`` iterations, each
line of the json log (``vis_data/<timestamp>.json``, and mmengine's ``scalars.json``) also
carries ``epoch``: the validation round the line belongs to, 1 for iterations
``1 .. val_interval`` and the evaluation after them, 2 for the next ``val_interval`` and so on.
``plot_curve`` then draws one mAP point per evaluation (its x axis, labelled "epoch", counts
evaluations), ``cal_train_time`` reports the time per round. The terminal and the text log are
unchanged, and so is everything in an epoch-based run (which logs its real epoch).
"""

import math
from typing import Optional, Tuple

from mmengine.runner import IterBasedTrainLoop, LogProcessor


def _val_round(runner, iteration: int) -> Optional[int]:
    """The validation round of ``iteration`` (1-based), None when the run is not iteration-based
    with periodic validation."""
    loop = runner._train_loop  # as mmengine's LoggerHook: .train_loop would build a missing one
    interval = getattr(loop, 'val_interval', None)
    if not isinstance(loop, IterBasedTrainLoop) or not interval:
        return None
    return max(1, math.ceil(iteration / interval))


class ValRoundLogProcessor(LogProcessor):
    """``LogProcessor`` (same arguments) adding ``epoch`` = validation round to the logged tags of
    iteration-based runs (see the module docstring)."""

    def get_log_after_iter(self, runner, batch_idx: int, mode: str) -> Tuple[dict, str]:
        tag, log_str = super().get_log_after_iter(runner, batch_idx, mode)
        if mode == 'train' and not self.by_epoch and 'epoch' not in tag:
            val_round = _val_round(runner, runner.iter + 1)
            if val_round is not None:
                tag['epoch'] = val_round
        return tag, log_str

    def get_log_after_epoch(
        self, runner, batch_idx: int, mode: str, with_non_scalar: bool = False
    ) -> Tuple[dict, str]:
        tag, log_str = super().get_log_after_epoch(runner, batch_idx, mode, with_non_scalar)
        if mode == 'val' and not self.by_epoch and 'epoch' not in tag:
            val_round = _val_round(runner, runner.iter)
            if val_round is not None:
                tag['epoch'] = val_round
        return tag, log_str
