"""The official Deformable-DETR family (fundamentalvision/Deformable-DETR): container, keys and
its 91-channel COCO-id classification heads.

- container: ``{'model', 'optimizer', 'lr_scheduler', 'epoch', 'args'}`` (:func:`unwrap_official`);
- tell-tale keys: ``transformer.level_embed`` with ``class_embed.*`` / ``input_proj.*`` /
  ``backbone.0.body.*`` (:func:`is_official_state_dict`);
- renames (:func:`official_to_ours`, the family's converter):

==========================================  =============================================
official                                    ours
==========================================  =============================================
``backbone.0.body.*``                       ``backbone.*`` (torchvision and mmdet ResNet share
                                            names; frozen BN gets ``num_batches_tracked = 0``)
``input_proj.i.{0,1}`` (1x1 conv, GN)       ``neck.convs.i.{conv,gn}``
``input_proj.j.{0,1}`` (3x3 s2 conv, GN)    ``neck.extra_convs.(j - n).{conv,gn}``, n = number
                                            of 1x1 convs (backbone outputs)
``transformer.*``                           same name
``query_embed.weight``                      ``transformer.query_embed.weight``
``class_embed.i`` / ``bbox_embed.i``        ``bbox_head.cls_branches.i`` / ``reg_branches.i``
``transformer.decoder.{class,bbox}_embed``  dropped (aliases of the heads above)
==========================================  =============================================

The official heads predict 91 channels indexed by raw COCO category id; mmdet's CocoDataset uses
the 80 used ids in ascending order. :func:`adapt_class_channels` remaps them after any conversion
(Hugging Face files converted from the official ones carry the same heads).
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .report import ConversionReport

_TELL_TALE_PREFIXES = ('class_embed.', 'input_proj.', 'backbone.0.body.')
_HEAD = re.compile(r'^(class_embed|bbox_embed)\.(\d+)\.(.*)$')
_INPUT_PROJ = re.compile(r'^input_proj\.(\d+)\.([01])\.(weight|bias)$')


def _neck_keys(state_dict: Mapping[str, torch.Tensor]) -> Dict[int, str]:
    """Our neck module name for each ``input_proj`` index.

    1x1 convs project backbone outputs (``neck.convs.i``); the 3x3 stride-2 convs that make extra
    levels follow them (``neck.extra_convs.j``). The kernel size tells them apart, which also covers
    the single-scale build (one 1x1 conv on C5).
    """
    indices = sorted({int(m.group(1)) for k in state_dict if (m := _INPUT_PROJ.match(k))})
    names: Dict[int, str] = {}
    num_lateral = 0
    for index in indices:
        kernel = state_dict[f'input_proj.{index}.0.weight'].shape[-1]
        if kernel == 1:
            names[index] = f'neck.convs.{index}'
            num_lateral += 1
        else:
            names[index] = f'neck.extra_convs.{index - num_lateral}'
    return names


def official_to_ours(
    state_dict: Mapping[str, torch.Tensor], report: ConversionReport
) -> Dict[str, torch.Tensor]:
    """Rename an official ``model`` state dict to our keys (class channels untouched).

    Args:
        state_dict: the ``'model'`` entry of an official checkpoint.
        report: receives one record per source key.

    Returns:
        A new dict in our keys.

    Raises:
        KeyError: a key that no rule knows, so the file is not an official Deformable DETR.
    """
    neck_names = _neck_keys(state_dict)
    converted: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = _rename(key, neck_names)
        report.record(key, new_key, 'alias of the top-level head' if new_key is None else '')
        if new_key is not None:
            converted[new_key] = value
    # Frozen BatchNorm stores no step counter; mmdet's BN does. 0 is what a frozen BN would count.
    for key in [k for k in converted if k.startswith('backbone.') and k.endswith('.running_var')]:
        counter = key[: -len('running_var')] + 'num_batches_tracked'
        if counter not in converted:
            converted[counter] = torch.tensor(0, dtype=torch.long)
            report.filled[counter] = 'frozen BatchNorm has no step counter'
    return converted


def _rename(key: str, neck_names: Dict[int, str]) -> Optional[str]:
    if key.startswith('backbone.0.body.'):
        return 'backbone.' + key[len('backbone.0.body.') :]
    if key.startswith(('transformer.decoder.class_embed.', 'transformer.decoder.bbox_embed.')):
        return None
    if key.startswith('transformer.'):
        return key
    if key == 'query_embed.weight':
        return 'transformer.query_embed.weight'
    match = _INPUT_PROJ.match(key)
    if match:
        index, layer, param = int(match.group(1)), match.group(2), match.group(3)
        return f'{neck_names[index]}.{"conv" if layer == "0" else "gn"}.{param}'
    match = _HEAD.match(key)
    if match:
        branch = 'cls_branches' if match.group(1) == 'class_embed' else 'reg_branches'
        return f'bbox_head.{branch}.{match.group(2)}.{match.group(3)}'
    raise KeyError(f'unknown key for an official Deformable DETR checkpoint: {key!r}')


def is_official_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether a bare state dict has the official names."""
    return 'transformer.level_embed' in state_dict and any(
        isinstance(k, str) and k.startswith(_TELL_TALE_PREFIXES) for k in state_dict
    )


def unwrap_official(
    checkpoint: Mapping[str, Any],
) -> Optional[Tuple[Mapping[str, torch.Tensor], dict]]:
    """The ``model`` state dict and a small meta dict (epoch, a few args) of an official file, or
    None when ``checkpoint`` is not the official container."""
    model = checkpoint.get('model')
    if not isinstance(model, Mapping) or 'state_dict' in checkpoint:
        return None
    meta = {'source': 'official Deformable-DETR'}
    if 'epoch' in checkpoint:
        meta['epoch'] = checkpoint['epoch']
    args = checkpoint.get('args')
    if args is not None:
        for name in (
            'with_box_refine',
            'two_stage',
            'num_feature_levels',
            'enc_n_points',
            'dec_n_points',
            'num_queries',
            'dataset_file',
        ):
            if hasattr(args, name):
                meta[f'official_args.{name}'] = getattr(args, name)
    return model, meta


def _ids(*ranges: Tuple[int, int]) -> Tuple[int, ...]:
    return tuple(i for start, stop in ranges for i in range(start, stop + 1))


#: COCO category id of mmdet class index ``c`` (``COCO_IDS_OF_MMDET_CLASSES[c]``).
COCO_IDS_OF_MMDET_CLASSES: Tuple[int, ...] = _ids(
    (1, 11), (13, 25), (27, 28), (31, 44), (46, 65), (67, 67), (70, 70), (72, 82), (84, 90)
)
NUM_COCO_ID_CHANNELS = 91
assert len(COCO_IDS_OF_MMDET_CLASSES) == 80


def adapt_class_channels(
    state_dict: Dict[str, torch.Tensor],
    num_classes: int,
    proposal_branch: int,
    report: ConversionReport,
) -> None:
    """Bring ``bbox_head.cls_branches.*`` (our keys, in place) to ``num_classes`` channels.

    - Same count: nothing to do.
    - 91 COCO-id channels to 80: decoder branches keep rows ``COCO_IDS_OF_MMDET_CLASSES`` (so our
      channel ``c`` is the official logit of mmdet class ``c``). The two-stage proposal branch
      (index ``proposal_branch``) is class-agnostic: the official code scores proposals with its
      channel 0 (objectness) and trains every other channel as a negative. We keep its first 80
      rows unchanged, so our channel 0 is the same objectness logit and the others stay as
      trained.
    - Anything else is left alone (noted in ``report``): a head for another label space is not
      reusable, and mmengine skips size-mismatched tensors with a warning, as fine-tuning expects.

    Args:
        state_dict: our keys; modified in place.
        num_classes: channels of the target model's classification branches.
        proposal_branch: index of the two-stage encoder branch (num_decoder_layers), or -1 if none.
        report: receives a note of what was done.
    """
    keys: List[str] = [k for k in state_dict if k.startswith('bbox_head.cls_branches.')]
    source_counts = {state_dict[k].shape[0] for k in keys}
    if not keys or source_counts == {num_classes}:
        return
    if source_counts != {NUM_COCO_ID_CHANNELS} or num_classes != len(COCO_IDS_OF_MMDET_CLASSES):
        # Another label space (fine-tuning on a new dataset): leave the heads alone, the loader
        # reports them as size mismatches and keeps the model's own.
        report.notes.append(
            f'classification branches have {sorted(source_counts)} channels, the '
            f'model {num_classes}: not remapped (only 91 COCO ids -> 80 is)'
        )
        return
    coco_rows = torch.tensor(COCO_IDS_OF_MMDET_CLASSES)
    proposal_prefix = f'bbox_head.cls_branches.{proposal_branch}.'
    remapped: Dict[int, torch.Tensor] = {}  # keyed by data_ptr: shared branches stay shared
    for key in keys:
        source = state_dict[key]
        if source.data_ptr() not in remapped:
            remapped[source.data_ptr()] = (
                source[:num_classes].clone()
                if key.startswith(proposal_prefix)
                else source.index_select(0, coco_rows)
            )
        state_dict[key] = remapped[source.data_ptr()]
    proposal_note = (
        f'; two-stage proposal branch {proposal_branch} keeps channels 0..79 '
        '(channel 0 = objectness)'
        if proposal_branch >= 0
        else ''
    )
    report.notes.append(
        "classification heads remapped from 91 COCO-id channels to mmdet's 80 "
        'classes' + proposal_note
    )
