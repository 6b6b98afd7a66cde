"""``GroupedOptimWrapperConstructor``: mmengine's default constructor, with parameters of equal
settings in one param group.

Why: with a ``paramwise_cfg`` (the Deformable DETR recipe has one: 0.1x learning rate for the
backbone, ``sampling_offsets`` and ``reference_points``), mmengine's
``DefaultOptimWrapperConstructor`` gives every parameter a param group of its own: 211 groups for
the demo model, 351 for the R-50 two-stage model (2 distinct settings). ``torch.optim.AdamW.step``
then runs its per-group Python and one kernel launch per group, a fixed cost per iteration that a
small model feels (``tools/analysis_tools/benchmark_optim_groups.py`` measures it; figures in
``docs/performance.md``).

What changes: only how parameters are grouped. Each group keeps the settings mmengine computed
for its parameters (``lr``, ``weight_decay``, ``lr_mult`` etc.; torch's optimizers apply them per
element), parameters keep mmengine's order within a group, and groups are ordered by their first
parameter. The update is bitwise the same without gradient clipping; with it, the total norm sums
the per-parameter norms in group order, so its last bit (and through it the weights' last bits)
can differ (``tests/engine/test_grouped_optim.py``). Param schedulers scale every group alike.

What to know: an optimizer ``state_dict`` saved with one layout does not load into the other
(torch's ``load_state_dict`` refuses a different number of groups), so resume a run with the
constructor it was started with; ``load_from`` (weights only) is not affected.
"""

from typing import Any, Dict, List

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor


def merge_param_groups(groups: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Groups with equal settings (every key but ``params``) merged into one, in order of first
    appearance; the parameters keep their order."""
    merged: Dict[tuple, Dict[str, Any]] = {}
    for group in groups:
        settings = {key: value for key, value in group.items() if key != 'params'}
        key = tuple(sorted((name, repr(value)) for name, value in settings.items()))
        if key not in merged:
            merged[key] = dict(settings, params=[])
        merged[key]['params'].extend(group['params'])
    return list(merged.values())


class GroupedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` whose param groups are merged by equal settings.

    Select it in a config with ``optim_wrapper = dict(..., constructor=
    'GroupedOptimWrapperConstructor')``; ``paramwise_cfg`` means what it means for mmengine's.
    """

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', **kwargs) -> None:
        """mmengine's recursive per-parameter groups; at the top level (``prefix == ''``)
        they are then merged in place."""
        super().add_params(params, module, prefix=prefix, **kwargs)
        if prefix == '':
            params[:] = merge_param_groups(params)
