"""Which Deformable DETR a state dict (our keys), a live model or a config describes, and what to
change when a checkpoint and a model differ.

From the weights alone:

- ``transformer.enc_output.*`` present                    -> two-stage
- ``cls_branches.0`` and ``.1`` are different tensors       -> iterative box refinement
  (without refinement the six branches are one module: one storage, which torch.save keeps)
- rows of ``transformer.level_embed``                      -> num_feature_levels
- rows of ``...attention_weights.weight``                  -> num_heads x sampled levels x K
  (``sampling_offsets`` has twice as many); nothing in the weights separates heads from points
  (``value_proj`` / ``output_proj`` are C x C whatever the head count), so only the rows are facts
- rows of ``transformer.query_embed.weight``               -> num_queries (not two-stage)
- rows of ``bbox_head.cls_branches.0.weight``              -> num_classes
- blocks of ``backbone.layer{1..4}``                        -> backbone depth

A live model adds what its attention modules know (``num_heads``, ``num_levels``, ``num_points``,
see :func:`variant_of_model`); that turns rows into a ``K`` for the override suggestion. What to
change when a checkpoint and a model differ: ``mismatch.py``.
"""

import re
from dataclasses import dataclass, replace
from typing import Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

_ENC_ATTN = 'transformer.encoder.layers.0.self_attn'
_DEC_ATTN = 'transformer.decoder.layers.0.cross_attn'


@dataclass(frozen=True)
class ModelVariant:
    """Structural facts of a Deformable DETR; model-only facts are None for a bare state dict."""

    as_two_stage: bool
    with_box_refine: Optional[bool]  # None: cannot tell (branches are equal copies)
    num_feature_levels: int
    embed_dims: int
    num_encoder_layers: int
    num_decoder_layers: int
    # rows of attention_weights: num_heads x sampled levels (L, or 1 without multi-scale
    # attention in the encoder) x K points; the weights alone cannot separate the three factors
    enc_attention_rows: int
    dec_attention_rows: int
    num_queries: Optional[int]
    num_classes: Optional[int]
    backbone_blocks: Optional[Tuple[int, ...]] = None  # blocks per ResNet stage
    # what a live model (or a config) knows besides its weights
    num_heads: Optional[int] = None
    enc_sampled_levels: Optional[int] = None
    enc_num_points: Optional[int] = None
    dec_num_points: Optional[int] = None

    @property
    def name(self) -> str:
        """'plain', 'refine' or 'two-stage' (or both of the first two when undecidable)."""
        if self.as_two_stage:
            return 'two-stage'
        if self.with_box_refine is None:
            return 'plain or refine (branches hold equal values)'
        return 'refine' if self.with_box_refine else 'plain'

    def describe(self) -> str:
        """One line naming every fact, for error messages and conversion reports."""
        attention = (
            f'attention rows {self.enc_attention_rows}/{self.dec_attention_rows} '
            '(enc/dec = num_heads x sampled levels x K)'
        )
        if self.num_heads is not None:
            attention += (
                f', num_heads={self.num_heads}, K={self.enc_num_points}/{self.dec_num_points}'
            )
        return (
            f'{self.name}, {self.num_feature_levels} feature level(s), {attention}, '
            f'{self.num_encoder_layers}+{self.num_decoder_layers} layers, '
            f'embed_dims={self.embed_dims}, num_queries={self.num_queries}, '
            f'num_classes={self.num_classes}, backbone blocks {self.backbone_blocks}'
        )


def _count_layers(keys: Iterable[str], prefix: str) -> int:
    """Number of layers ``prefix{i}.`` among ``keys`` (highest index + 1; 0 if none)."""
    pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
    indices = {int(m.group(1)) for key in keys if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _backbone_blocks(keys: List[str]) -> Optional[Tuple[int, ...]]:
    blocks = []
    while count := _count_layers(keys, f'backbone.layer{len(blocks) + 1}.'):
        blocks.append(count)
    return tuple(blocks) or None


def _branches_distinct(
    state_dict: Mapping[str, torch.Tensor], key_a: str, key_b: str, by_identity: bool
) -> Optional[bool]:
    """Whether two branch tensors are separate modules: False if shared, None if undecidable.

    A shared module is one tensor (same storage; torch.save keeps that), or stored once. Separate
    tensors with different values are separate modules. Separate tensors with equal values are
    ambiguous: a refine model right after init (its branches are copies) or shared weights whose
    sharing a file format lost; either way both variants compute the same with them.
    """
    tensor_a, tensor_b = state_dict.get(key_a), state_dict.get(key_b)
    if tensor_a is None or tensor_b is None:
        return False
    if tensor_a.shape == tensor_b.shape and tensor_a.data_ptr() == tensor_b.data_ptr():
        return False
    if by_identity or tensor_a.shape != tensor_b.shape or not torch.equal(tensor_a, tensor_b):
        return True
    return None


def is_full_detector(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the dict (our keys) holds a whole detector, not e.g. a backbone alone."""
    return (
        'transformer.level_embed' in state_dict
        and f'{_ENC_ATTN}.attention_weights.weight' in state_dict
    )


def infer_variant(
    state_dict: Mapping[str, torch.Tensor], *, by_identity: bool = False
) -> ModelVariant:
    """Describe the model behind a state dict in our keys.

    Args:
        state_dict: our keys.
        by_identity: judge branch sharing by tensor identity alone; right for a live model's
            ``state_dict()`` (a refine model's branches are equal copies right after it is built).

    Raises:
        ValueError: the dict lacks the keys every Deformable DETR has.
    """
    if not is_full_detector(state_dict):
        raise ValueError(
            'not a whole Deformable DETR state dict: transformer.level_embed or '
            f'{_ENC_ATTN}.attention_weights.weight is missing'
        )
    keys = list(state_dict)
    levels, embed_dims = state_dict['transformer.level_embed'].shape
    as_two_stage = any(key.startswith('transformer.enc_output.') for key in keys)
    distinct = [
        _branches_distinct(
            state_dict,
            f'bbox_head.{branch}.0.{param}',
            f'bbox_head.{branch}.1.{param}',
            by_identity,
        )
        for branch, param in (('cls_branches', 'weight'), ('reg_branches', 'layers.0.weight'))
    ]
    with_box_refine: Optional[bool]
    if as_two_stage or True in distinct:
        with_box_refine = True
    elif None in distinct:
        with_box_refine = None
    else:
        with_box_refine = False
    query_embed = state_dict.get('transformer.query_embed.weight')
    cls_weight = state_dict.get('bbox_head.cls_branches.0.weight')
    dec_attn = state_dict.get(f'{_DEC_ATTN}.attention_weights.weight')
    return ModelVariant(
        as_two_stage=as_two_stage,
        with_box_refine=with_box_refine,
        num_feature_levels=int(levels),
        embed_dims=int(embed_dims),
        num_encoder_layers=_count_layers(keys, 'transformer.encoder.layers.'),
        num_decoder_layers=_count_layers(keys, 'transformer.decoder.layers.'),
        enc_attention_rows=int(state_dict[f'{_ENC_ATTN}.attention_weights.weight'].shape[0]),
        dec_attention_rows=int(dec_attn.shape[0]) if dec_attn is not None else 0,
        num_queries=int(query_embed.shape[0]) if query_embed is not None else None,
        num_classes=int(cls_weight.shape[0]) if cls_weight is not None else None,
        backbone_blocks=_backbone_blocks(keys),
    )


def variant_of_model(
    model: nn.Module, state_dict: Optional[Mapping[str, torch.Tensor]] = None
) -> ModelVariant:
    """:func:`infer_variant` of a live model, plus its attention modules' own head and point
    counts (read by attribute, so nothing from ``models`` is imported)."""
    variant = infer_variant(
        model.state_dict() if state_dict is None else state_dict, by_identity=True
    )
    try:
        encoder, decoder = model.get_submodule(_ENC_ATTN), model.get_submodule(_DEC_ATTN)
        return replace(
            variant,
            num_heads=int(encoder.num_heads),
            enc_sampled_levels=int(encoder.num_levels),
            enc_num_points=int(encoder.num_points),
            dec_num_points=int(decoder.num_points),
        )
    except (AttributeError, TypeError):  # another attention module: rows are all we know
        return variant


def variant_of_config(model_cfg: Mapping) -> Optional[ModelVariant]:
    """The variant a ``DeformDETR`` model config builds, computed from its settings (None when it
    is not one or lacks a setting)."""
    from mmdet.registry import MODELS

    try:
        transformer, backbone = model_cfg['transformer'], model_cfg['backbone']
        levels, heads = model_cfg['num_feature_levels'], transformer['num_heads']
        enc_levels = levels if transformer.get('multi_scale_attention', True) else 1
        arch = getattr(MODELS.get(backbone['type']), 'arch_settings', {}).get(backbone['depth'])
        return ModelVariant(
            as_two_stage=model_cfg['as_two_stage'],
            with_box_refine=model_cfg['with_box_refine'],
            num_feature_levels=levels,
            embed_dims=transformer['embed_dims'],
            num_encoder_layers=transformer['num_encoder_layers'],
            num_decoder_layers=transformer['num_decoder_layers'],
            enc_attention_rows=heads * enc_levels * transformer['enc_num_points'],
            dec_attention_rows=heads * levels * transformer['dec_num_points'],
            num_queries=None if model_cfg['as_two_stage'] else model_cfg['num_queries'],
            num_classes=model_cfg['bbox_head']['num_classes'],
            backbone_blocks=(tuple(arch[1][: backbone.get('num_stages', 4)]) if arch else None),
            num_heads=heads,
            enc_sampled_levels=enc_levels,
            enc_num_points=transformer['enc_num_points'],
            dec_num_points=transformer['dec_num_points'],
        )
    except (KeyError, TypeError, AttributeError):
        return None
