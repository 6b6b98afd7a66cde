"""Does a checkpoint fit a model? The detector's load pre-hook, and the stricter check for testing.

mmengine's ``load_from``, ``resume`` and ``mmengine.runner.load_checkpoint`` (and torch's own
``Module.load_state_dict``) call ``_load_from_state_dict`` on the root module first, with the whole
state dict, before descending into the children; a pre-hook registered on the detector
therefore sees the checkpoint before any sub-module does and can rewrite it in place. Usage, in
``DeformDETR.__init__``::

    from mmdet_deformdetr.checkpoint.load_hook import convert_checkpoint_pre_hook
    self.register_load_state_dict_pre_hook(convert_checkpoint_pre_hook)

The hook (:func:`convert_checkpoint_pre_hook`), in order:

1. finds the family in :data:`~.families.FAMILIES` (unwrapping e.g. an official file that
   mmengine passes whole) and converts to our keys with the model's class count;
2. refuses another variant (:class:`CheckpointMismatchError`, a ValueError, naming the differing
   facts and settings, the keys/shapes that disagree and the shipped configs that fit), which
   also guards our own checkpoints: two-stage weights into a plain model would otherwise be a
   mere warning with ``strict=False``;
3. warns, naming ``num_classes``, when the classification heads cannot load: right for
   fine-tuning on another label space, where they keep their initialisation.

The hook cannot know whether the model is trained or tested. Testing with heads that did not load
would report a plausible mAP from random heads, so the test tools call
:func:`check_checkpoint_for_testing` before ``runner.test()``; it raises
:class:`HeadsNotLoadedError` instead of warning.
"""

import logging
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from .families import OURS, Identified, convert_state_dict, identify, identify_checkpoint
from .mismatch import variant_mismatch
from .report import ConversionReport
from .safe_load import CheckpointError
from .variant import infer_variant, is_full_detector, variant_of_model

_CLASSES_KEY = 'bbox_head.cls_branches.0.weight'
_CLASSES_SETTING = 'model.bbox_head.num_classes'


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint is another Deformable DETR variant, or lacks weights a test needs."""


class HeadsNotLoadedError(CheckpointMismatchError):
    """The checkpoint's classification heads have another class count than the model's."""


def key_differences(
    converted: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], max_keys: int = 8
) -> List[str]:
    """Lines naming keys found on one side only, and keys whose shapes disagree.

    At most ``max_keys`` keys are named per line.
    """
    only_ckpt = [k for k in converted if k not in target]
    only_model = [k for k in target if k not in converted and not k.endswith('num_batches_tracked')]
    shapes = [
        f'{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(target[k].shape)}'
        for k in converted
        if k in target and converted[k].shape != target[k].shape
    ]
    lines = []
    for title, items in (
        ('only in checkpoint', only_ckpt),
        ('only in model', only_model),
        ('shape differs', shapes),
    ):
        if items:
            shown = items[:max_keys] + (
                [f'... ({len(items) - max_keys} more)'] if len(items) > max_keys else []
            )
            lines.append(f'{title} ({len(items)}): ' + '; '.join(shown))
    return lines


def check_fits(
    converted: Mapping[str, torch.Tensor],
    target: Union[nn.Module, Mapping[str, torch.Tensor]],
    report: Optional[ConversionReport] = None,
) -> None:
    """Raise :class:`CheckpointMismatchError` when ``converted`` is another Deformable DETR variant
    than ``target``.

    Args:
        converted: our keys.
        target: the model (preferred: its attention modules' ``num_heads`` / ``num_points`` turn
            attention rows into a suggested ``K``) or its ``state_dict()``.
        report: receives ``missing`` / ``unexpected`` keys.

    Partial checkpoints (e.g. a backbone only) are not judged.
    """
    target_state = target.state_dict() if isinstance(target, nn.Module) else target
    if report is not None:
        report.missing = [k for k in target_state if k not in converted]
        report.unexpected = [k for k in converted if k not in target_state]
    if not (is_full_detector(converted) and is_full_detector(target_state)):
        return
    model_variant = (
        variant_of_model(target, target_state)
        if isinstance(target, nn.Module)
        else infer_variant(target_state, by_identity=True)
    )
    message = variant_mismatch(infer_variant(converted), model_variant, converted, target_state)
    if message is not None:
        raise CheckpointMismatchError(
            message + '\n' + '\n'.join(key_differences(converted, target_state))
        )


class _Fitted(NamedTuple):
    converted: Dict[str, torch.Tensor]  # our keys, class heads remapped where that is possible
    report: ConversionReport
    target: Dict[str, torch.Tensor]  # model.state_dict()
    class_counts: Optional[Tuple[int, int]]  # (checkpoint's, model's) when they differ


def _fit(found: Identified, model: nn.Module) -> _Fitted:
    """Convert ``found`` for ``model`` and refuse another variant (:func:`check_fits`)."""
    target = model.state_dict()
    num_classes = target[_CLASSES_KEY].shape[0] if _CLASSES_KEY in target else None
    converted, report = convert_state_dict(
        found.state_dict, num_classes=num_classes, family=found.family
    )
    check_fits(converted, model, report)
    counts = None
    if _CLASSES_KEY in converted and _CLASSES_KEY in target:
        counts = (converted[_CLASSES_KEY].shape[0], target[_CLASSES_KEY].shape[0])
    return _Fitted(converted, report, target, counts if counts and counts[0] != counts[1] else None)


def convert_checkpoint_pre_hook(
    module: nn.Module,
    state_dict: Dict[str, Any],
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: List[str],
    unexpected_keys: List[str],
    error_msgs: List[str],
) -> None:
    """Rewrite ``state_dict`` (in place) into our keys before ``module`` loads it.

    Signature of ``nn.Module.register_load_state_dict_pre_hook`` (module first). Only entries under
    ``prefix`` are touched, so the detector may itself be a child of a wrapper.

    Raises:
        CheckpointMismatchError: the checkpoint is another Deformable DETR variant than ``module``.
    """
    own = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    found = identify(own)
    if found is None:
        return  # a partial or foreign dict: let the normal missing/unexpected reporting speak
    converted, report, _, counts = _fit(found, module)
    if counts is not None:
        _log(
            f"the checkpoint's classification heads have {counts[0]} classes, the model "
            f'num_classes={counts[1]} ({_CLASSES_SETTING}): bbox_head.cls_branches keep their '
            'initialisation. Right for fine-tuning on another label space; to test or infer '
            f'with this checkpoint, set {_CLASSES_SETTING}={counts[0]}.',
            logging.WARNING,
        )
    if converted.keys() == own.keys() and all(converted[k] is own[k] for k in own):
        return  # already our keys and tensors (our own checkpoints): nothing to rewrite
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]
    state_dict.update({prefix + k: v for k, v in converted.items()})
    if found.family.name != OURS:
        _log('converted checkpoint into mmdet_deformdetr keys:\n' + report.summary(max_keys=3))


def _unwrap_model(model: nn.Module) -> nn.Module:
    """The detector inside DDP / TTA wrappers (both keep it as ``.module``)."""
    while isinstance(getattr(model, 'module', None), nn.Module):
        model = model.module
    return model


def check_checkpoint_for_testing(
    model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Any]]
) -> ConversionReport:
    """Raise unless every weight of ``model`` comes from ``checkpoint``: call before testing.

    Args:
        model: the detector, or a wrapper of it (``runner.model``: DDP, TTA).
        checkpoint: what ``load_from`` names (a path, or any scheme mmengine's
            ``CheckpointLoader`` knows, e.g. ``deformdetr://``), or an already loaded checkpoint.

    Returns:
        The conversion report (``missing`` / ``unexpected`` filled).

    Raises:
        HeadsNotLoadedError: the classification heads have another class count; the message names
            both counts and ``model.bbox_head.num_classes``.
        CheckpointMismatchError: another variant, or weights of the model missing or of another
            shape in the checkpoint (they would be tested at their random initialisation).
        UnknownCheckpointError, UntrustedCheckpointError, CorruptCheckpointError: see the loaders.
    """
    from mmengine.runner import CheckpointLoader

    label = 'the checkpoint'
    if not isinstance(checkpoint, Mapping):
        label = os.fspath(checkpoint)
        checkpoint = CheckpointLoader.load_checkpoint(label, map_location='cpu', logger='silent')
    model = _unwrap_model(model)
    found = identify_checkpoint(checkpoint, source=label)
    converted, report, target, counts = _fit(found, model)
    if counts is not None:
        raise HeadsNotLoadedError(
            f'{label} has classification heads for {counts[0]} classes, the model '
            f'num_classes={counts[1]}: testing would score every class with randomly initialised '
            f'heads. Set {_CLASSES_SETTING}={counts[0]} (e.g. --cfg-options '
            f"{_CLASSES_SETTING}={counts[0]}) with the dataset's classes to match, or test a "
            f'checkpoint trained for {counts[1]} classes. (Fine-tuning with load_from is '
            'unaffected: there the heads are re-initialised on purpose.)'
        )
    differences = key_differences({k: v for k, v in converted.items() if k in target}, target)
    if differences:
        raise CheckpointMismatchError(
            f'{label} does not hold every weight of the model; testing would use random values '
            'for:\n' + '\n'.join(differences)
        )
    return report


def _log(message: str, level: int = logging.INFO) -> None:
    from mmengine.logging import print_log

    print_log(message, logger='current', level=level)
