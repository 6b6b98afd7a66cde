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

import contextlib
import logging
import re
from typing import Any, Dict, Iterator, List, Sequence

import torch.nn as nn
from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from mmdet_deformdetr.console.quiet import screen_handlers
from mmdet_deformdetr.console.verbosity import verbose

# mmengine's add_params logs a line per parameter and setting, and one per frozen parameter
_PER_PARAMETER = re.compile(r'paramwise_options -- |\S+ is skipped since its requires_grad=False$')


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
        they are then merged in place, and one line per merged group (and one for the frozen
        parameters) replaces mmengine's line per parameter on the screen (the log file keeps
        those; ``--verbose`` shows them)."""
        if prefix != '':
            super().add_params(params, module, prefix=prefix, **kwargs)
            return
        with _per_parameter_lines_off_screen():
            super().add_params(params, module, prefix=prefix, **kwargs)
        params[:] = merge_param_groups(params)
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        for line in describe_param_groups(params, module, custom_keys):
            print_log(line, logger='current')


class _PerParameterLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _PER_PARAMETER.match(str(record.getMessage()))


@contextlib.contextmanager
def _per_parameter_lines_off_screen() -> Iterator[None]:
    """mmengine's per-parameter lines kept off the screen handlers of the current logger."""
    handlers = [] if verbose() else screen_handlers(MMLogger.get_current_instance())
    line_filter = _PerParameterLines()
    for handler in handlers:
        handler.addFilter(line_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(line_filter)


def _where(name: str, keys: Sequence[str]) -> str:
    """The custom key that matched ``name`` (mmengine's rule: longest first), else its top-level
    module."""
    return next((key for key in keys if key in name), name.split('.')[0])


def _counts(names: Sequence[str], keys: Sequence[str]) -> str:
    counts: Dict[str, int] = {}
    for name in names:
        counts[_where(name, keys)] = counts.get(_where(name, keys), 0) + 1
    return ', '.join(f'{where} ({count})' for where, count in counts.items())


def describe_param_groups(
    groups: Sequence[Dict[str, Any]], module: nn.Module, custom_keys: Dict[str, Any]
) -> List[str]:
    """One line per param group (its settings, its tensors by custom key or top-level module)
    and one for the parameters left out because ``requires_grad=False``."""
    keys = sorted(sorted(custom_keys), key=len, reverse=True)
    names = {id(param): name for name, param in module.named_parameters()}
    lines = []
    for index, group in enumerate(groups):
        settings = ', '.join(
            f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
            for k, v in group.items()
            if k != 'params'
        )
        values = sum(param.numel() for param in group['params'])
        lines.append(
            f'param group {index}: {settings or "the optimizer defaults"}: '
            f'{len(group["params"])} tensors, {values / 1e6:.2f} M values: '
            + _counts([names.get(id(p), '?') for p in group['params']], keys)
        )
    frozen = [(name, p) for name, p in module.named_parameters() if not p.requires_grad]
    if frozen:
        values = sum(param.numel() for _, param in frozen)
        lines.append(
            f'not optimised (requires_grad=False): {len(frozen)} tensors, '
            f'{values / 1e6:.2f} M values: ' + _counts([name for name, _ in frozen], keys)
        )
    return lines
