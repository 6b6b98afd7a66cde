"""Official Deformable-DETR state dict (fundamentalvision/Deformable-DETR) -> our keys.

Key facts (see /work/shared/reference/README.md):

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

Class channels are handled afterwards by :func:`~.classes.adapt_class_channels`.
"""

import re
from typing import Dict, Mapping, Optional, Tuple

import torch

from .report import ConversionReport

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


def official_to_ours(state_dict: Mapping[str, torch.Tensor],
                     report: ConversionReport) -> Dict[str, torch.Tensor]:
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
        counter = key[:-len('running_var')] + 'num_batches_tracked'
        if counter not in converted:
            converted[counter] = torch.tensor(0, dtype=torch.long)
            report.filled[counter] = 'frozen BatchNorm has no step counter'
    return converted


def _rename(key: str, neck_names: Dict[int, str]) -> Optional[str]:
    if key.startswith('backbone.0.body.'):
        return 'backbone.' + key[len('backbone.0.body.'):]
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


def split_official_checkpoint(checkpoint: Mapping) -> Tuple[Mapping[str, torch.Tensor], dict]:
    """The ``model`` state dict and a small meta dict (epoch, a few args) of an official file."""
    meta = {'source': 'official Deformable-DETR'}
    if 'epoch' in checkpoint:
        meta['epoch'] = checkpoint['epoch']
    args = checkpoint.get('args')
    if args is not None:
        for name in ('with_box_refine', 'two_stage', 'num_feature_levels', 'enc_n_points',
                     'dec_n_points', 'num_queries', 'dataset_file'):
            if hasattr(args, name):
                meta[f'official_args.{name}'] = getattr(args, name)
    return checkpoint['model'], meta
