"""The mmdet 3.x family (``DeformableDETR`` of mmdet's zoo): its keys -> ours.

Container: mmengine's ``{'meta', 'state_dict'}``. Tell-tale keys: a top-level ``level_embed`` or
``encoder.layers.*`` (:func:`is_mmdet_state_dict`). Converter: :func:`mmdet_to_ours`.

mmdet wraps the same computations in its generic transformer bricks, so only names differ:

================================================  ============================================
mmdet 3.x                                         ours (docs/architecture.md)
================================================  ============================================
``encoder.layers.i.self_attn.*``                  ``transformer.encoder.layers.i.self_attn.*``
``encoder.layers.i.ffn.layers.0.0.*`` / ``.1.*``  ``...linear1.*`` / ``...linear2.*``
``encoder.layers.i.norms.0`` / ``norms.1``        ``...norm1`` / ``...norm2``
``decoder.layers.i.self_attn.attn.*``             ``transformer.decoder.layers.i.self_attn.*``
``decoder.layers.i.cross_attn.*``                 ``transformer.decoder.layers.i.cross_attn.*``
``decoder.layers.i.norms.0`` / ``1`` / ``2``      ``...norm2`` / ``norm1`` / ``norm3`` (official
                                                  names: norm2 follows self-attention)
``level_embed``                                   ``transformer.level_embed``
``query_embedding.weight``                        ``transformer.query_embed.weight``
``reference_points_fc.*``                         ``transformer.reference_points.*``
``memory_trans_fc`` / ``memory_trans_norm``       ``transformer.enc_output`` / ``enc_output_norm``
``pos_trans_fc`` / ``pos_trans_norm``             ``transformer.pos_trans`` / ``pos_trans_norm``
``bbox_head.reg_branches.j.{0,2,4}.*``            ``bbox_head.reg_branches.j.layers.{0,1,2}.*``
``backbone.*``, ``neck.*``, ``bbox_head.cls_*``   unchanged
================================================  ============================================

mmdet's zoo configs build the ChannelMapper without conv bias (GroupNorm follows), ours with bias
(the official ``input_proj`` has one). Missing neck conv biases are filled with zeros, which
leaves the function unchanged.
"""

import re
from collections import OrderedDict
from typing import Any, Callable, List, Mapping, Tuple, Union

import torch
from torch import Tensor

from .report import ConversionReport

_LAYER = r'(encoder|decoder)\.layers\.(\d+)\.'
_DEFORM_ATTN = r'(?:sampling_offsets|attention_weights|value_proj|output_proj)'
# mmdet's reg branch is Sequential(Linear, ReLU, Linear, ReLU, Linear): Linear i sits at 2 * i
_REG_LINEAR = {'0': 0, '2': 1, '4': 2}
# mmdet's norms.{i} in layer order -> official names (the decoder's norm2 follows self-attention)
_NORM_NAMES = {
    'encoder': {'0': 'norm1', '1': 'norm2'},
    'decoder': {'0': 'norm2', '1': 'norm1', '2': 'norm3'},
}
_Replacement = Union[str, Callable[['re.Match[str]'], str]]
_RULES: List[Tuple['re.Pattern[str]', _Replacement]] = [
    (re.compile(r'^(backbone|neck)\.(.+)$'), r'\1.\2'),
    (
        re.compile(r'^bbox_head\.cls_branches\.(\d+)\.(weight|bias)$'),
        r'bbox_head.cls_branches.\1.\2',
    ),
    (
        re.compile(r'^bbox_head\.reg_branches\.(\d+)\.([024])\.(weight|bias)$'),
        lambda m: f'bbox_head.reg_branches.{m[1]}.layers.{_REG_LINEAR[m[2]]}.{m[3]}',
    ),
    (
        re.compile(
            '^' + _LAYER + r'(self_attn|cross_attn)\.(' + _DEFORM_ATTN + r'\.(?:weight|bias))$'
        ),
        r'transformer.\1.layers.\2.\3.\4',
    ),
    (
        re.compile(
            r'^decoder\.layers\.(\d+)\.self_attn\.attn\.'
            r'(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$'
        ),
        r'transformer.decoder.layers.\1.self_attn.\2',
    ),
    (
        re.compile('^' + _LAYER + r'ffn\.layers\.0\.0\.(weight|bias)$'),
        r'transformer.\1.layers.\2.linear1.\3',
    ),
    (
        re.compile('^' + _LAYER + r'ffn\.layers\.1\.(weight|bias)$'),
        r'transformer.\1.layers.\2.linear2.\3',
    ),
    (
        re.compile('^' + _LAYER + r'norms\.(\d)\.(weight|bias)$'),
        lambda m: f'transformer.{m[1]}.layers.{m[2]}.{_NORM_NAMES[m[1]][m[3]]}.{m[4]}',
    ),
    (re.compile(r'^level_embed$'), 'transformer.level_embed'),
    (re.compile(r'^query_embedding\.weight$'), 'transformer.query_embed.weight'),
    (re.compile(r'^reference_points_fc\.(weight|bias)$'), r'transformer.reference_points.\1'),
    (re.compile(r'^memory_trans_fc\.(weight|bias)$'), r'transformer.enc_output.\1'),
    (re.compile(r'^memory_trans_norm\.(weight|bias)$'), r'transformer.enc_output_norm.\1'),
    (re.compile(r'^pos_trans_fc\.(weight|bias)$'), r'transformer.pos_trans.\1'),
    (re.compile(r'^pos_trans_norm\.(weight|bias)$'), r'transformer.pos_trans_norm.\1'),
]
_NECK_CONV_WEIGHT = re.compile(r'^neck\.(convs|extra_convs)\.(\d+)\.conv\.weight$')


def convert_mmdet_key(key: str) -> str:
    """Our name of one mmdet 3.x ``DeformableDETR`` state-dict key.

    Raises:
        KeyError: the key belongs to no known part of mmdet's model.
    """
    for pattern, replacement in _RULES:
        if pattern.match(key):
            try:
                return pattern.sub(replacement, key)
            except KeyError:  # an index the tables above do not know (e.g. encoder norms.2)
                raise KeyError(key) from None
    raise KeyError(key)


def is_mmdet_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether a bare state dict has mmdet 3.x ``DeformableDETR``'s names."""
    return 'level_embed' in state_dict or any(
        isinstance(k, str) and k.startswith('encoder.layers.') for k in state_dict
    )


def mmdet_to_ours(
    state_dict: Mapping[str, Tensor], report: ConversionReport
) -> 'OrderedDict[str, Tensor]':
    """Rename every key of an mmdet 3.x ``DeformableDETR`` state dict to ours (the converter).

    Args:
        state_dict: the model's state dict (``checkpoint['state_dict']`` of an mmdet file).
            Tensors are not copied.
        report: receives one record per source key and the filled neck biases.

    Returns:
        An ``OrderedDict`` loadable with ``strict=True`` into the matching ``DeformDETR``
        (same variant, levels and sizes), with zero neck conv biases added where mmdet had none.

    Raises:
        ValueError: listing keys that are not part of mmdet's ``DeformableDETR`` (e.g. a file of
            another model, or one still in mmdet 2.x layout).
    """
    converted: OrderedDict[str, Tensor] = OrderedDict()
    unknown = []
    for key, value in state_dict.items():
        try:
            new_key = convert_mmdet_key(key)
        except KeyError:
            unknown.append(key)
            continue
        converted[new_key] = value
        report.record(key, new_key)
    if unknown:
        raise ValueError(
            f'{len(unknown)} keys are not mmdet 3.x DeformableDETR keys (first: '
            f'{unknown[:5]}); is this an mmdet 3.x DeformableDETR state dict?'
        )
    for key in list(converted):
        match = _NECK_CONV_WEIGHT.match(key)
        bias_key = key[: -len('weight')] + 'bias'
        if match and bias_key not in converted:
            weight = converted[key]
            converted[bias_key] = torch.zeros(
                weight.shape[0], dtype=weight.dtype, device=weight.device
            )
            report.filled[bias_key] = "zero bias: mmdet's zoo neck has none (GroupNorm follows)"
    return converted


def convert_mmdet_state_dict(state_dict: Mapping[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """:func:`mmdet_to_ours` without a report (for callers that only want the dict)."""
    return mmdet_to_ours(state_dict, ConversionReport())
