"""Load-state-dict pre-hook: lets ``DeformDETR`` load any supported checkpoint family directly.

mmengine's ``load_from``, ``resume`` and ``mmengine.runner.load_checkpoint`` (and torch's own
``Module.load_state_dict``) call ``_load_from_state_dict`` on the root module first, with the whole
state dict, before descending into the children; a pre-hook registered on the detector
therefore sees the checkpoint before any sub-module does and can rewrite it in place. Usage, in
``DeformDETR.__init__``::

    from mmdet_deformdetr.checkpoint.load_hook import convert_checkpoint_pre_hook
    self.register_load_state_dict_pre_hook(convert_checkpoint_pre_hook)

What it does, in order:

1. mmengine passes an official file whole (it has no ``state_dict`` entry): unwrap its ``model``.
2. Detect the family from the keys; a dict in our keys passes through unchanged (no copies).
3. Convert to our keys with the model's class count (91 COCO ids -> 80 when the model has 80).
4. Refuse another variant with a ValueError naming the differing facts, the keys/shapes that
   disagree and the config override that would fit (this also guards our own checkpoints: loading
   two-stage weights into a plain model would otherwise be a mere warning with ``strict=False``).
"""

from typing import Any, Dict, List, Mapping

import torch
from torch import nn

from .convert import check_fits, convert_state_dict
from .formats import CheckpointFormat, detect_state_dict_format, is_official_container

_CLASSES_KEY = 'bbox_head.cls_branches.0.weight'


def _unwrap_official(own: Dict[str, Any]) -> Dict[str, Any]:
    if is_official_container(own) and not isinstance(own.get('model'), torch.Tensor):
        return dict(own['model'])
    return own


def convert_checkpoint_pre_hook(module: nn.Module, state_dict: Dict[str, Any], prefix: str,
                                local_metadata: dict, strict: bool, missing_keys: List[str],
                                unexpected_keys: List[str], error_msgs: List[str]) -> None:
    """Rewrite ``state_dict`` (in place) into our keys before ``module`` loads it.

    Signature of ``nn.Module.register_load_state_dict_pre_hook`` (module first). Only entries under
    ``prefix`` are touched, so the detector may itself be a child of a wrapper.

    Raises:
        ValueError: the checkpoint is another Deformable DETR variant than ``module``.
    """
    own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    own = _unwrap_official(own)
    source_format = detect_state_dict_format(own)
    if source_format is CheckpointFormat.UNKNOWN:
        return  # a partial or foreign dict: let the normal missing/unexpected reporting speak
    target: Mapping[str, torch.Tensor] = module.state_dict()
    num_classes = target[_CLASSES_KEY].shape[0] if _CLASSES_KEY in target else None
    converted, report = convert_state_dict(own, num_classes=num_classes,
                                           source_format=source_format)
    check_fits(converted, target, report)
    if source_format is CheckpointFormat.OURS:
        return
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]
    state_dict.update({prefix + k: v for k, v in converted.items()})
    _log(report.summary(max_keys=3))


def _log(message: str) -> None:
    from mmengine.logging import print_log

    print_log(f'converted checkpoint into mmdet_deformdetr keys:\n{message}', logger='current')
