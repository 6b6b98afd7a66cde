"""Infer a Deformable DETR variant from state-dict keys and shapes, and explain mismatches.

Works on our keys (docs/architecture.md), so it describes a converted checkpoint and a live
``DeformDETR`` (via ``model.state_dict()``) in the same way:

- ``transformer.enc_output.*`` present                    -> two-stage
- ``cls_branches.0`` and ``.1`` are different tensors       -> iterative box refinement
  (without refinement the six branches are one module: one storage, which torch.save keeps)
- rows of ``transformer.level_embed``                      -> num_feature_levels
- rows of ``...attention_weights.weight`` / levels          -> num_heads * num_points (K)
- rows of ``transformer.query_embed.weight``               -> num_queries (not two-stage)
- rows of ``bbox_head.cls_branches.0.weight``              -> num_classes
"""

import re
from dataclasses import dataclass, fields
from typing import Iterable, Mapping, Optional

import torch

_ENC_ATTN = 'transformer.encoder.layers.0.self_attn.attention_weights.weight'
_DEC_ATTN = 'transformer.decoder.layers.0.cross_attn.attention_weights.weight'


@dataclass(frozen=True)
class ModelVariant:
    """Structural facts of a Deformable DETR model, as far as the weights reveal them."""

    as_two_stage: bool
    with_box_refine: Optional[bool]  # None: cannot tell (branches are equal copies)
    num_feature_levels: int
    embed_dims: int
    num_encoder_layers: int
    num_decoder_layers: int
    # rows of attention_weights: num_heads x sampled levels (L, or 1 without multi-scale
    # attention) x K points; the weights alone cannot separate the three factors
    enc_attention_rows: int
    dec_attention_rows: int
    num_queries: Optional[int]
    num_classes: Optional[int]

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
        points = (f'attention rows {self.enc_attention_rows}/{self.dec_attention_rows} (enc/dec; '
                  f'= heads x levels x K, K={_points(self.enc_attention_rows, self)}/'
                  f'{_points(self.dec_attention_rows, self)} with 8 heads on all levels)')
        return (f'{self.name}, {self.num_feature_levels} feature level(s), {points}, '
                f'{self.num_encoder_layers}+{self.num_decoder_layers} layers, '
                f'embed_dims={self.embed_dims}, num_queries={self.num_queries}, '
                f'num_classes={self.num_classes}')


def _points(attention_rows: int, variant: 'ModelVariant') -> str:
    """K for ``attention_rows`` with 8 heads sampling every level, or '?' if that cannot be."""
    per_point = 8 * variant.num_feature_levels
    return str(attention_rows // per_point) if attention_rows % per_point == 0 else '?'


def _count_layers(keys: Iterable[str], prefix: str) -> int:
    """Number of layers ``prefix{i}.`` among ``keys`` (highest index + 1; 0 if none)."""
    pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
    indices = {int(m.group(1)) for key in keys if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _branches_distinct(state_dict: Mapping[str, torch.Tensor], key_a: str, key_b: str,
                       by_identity: bool) -> Optional[bool]:
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
    return 'transformer.level_embed' in state_dict and _ENC_ATTN in state_dict


def infer_variant(state_dict: Mapping[str, torch.Tensor], *,
                  by_identity: bool = False) -> ModelVariant:
    """Describe the model behind a state dict in our keys.

    Args:
        state_dict: our keys.
        by_identity: judge branch sharing by tensor identity alone; right for a live model's
            ``state_dict()`` (a refine model's branches are equal copies right after it is built).

    Raises:
        ValueError: the dict lacks the keys every Deformable DETR has.
    """
    if not is_full_detector(state_dict):
        raise ValueError('not a whole Deformable DETR state dict: transformer.level_embed or '
                         f'{_ENC_ATTN} is missing')
    keys = list(state_dict)
    levels, embed_dims = state_dict['transformer.level_embed'].shape
    as_two_stage = any(key.startswith('transformer.enc_output.') for key in keys)
    distinct = [_branches_distinct(state_dict, f'bbox_head.{branch}.0.{param}',
                                   f'bbox_head.{branch}.1.{param}', by_identity)
                for branch, param in (('cls_branches', 'weight'),
                                      ('reg_branches', 'layers.0.weight'))]
    with_box_refine: Optional[bool]
    if as_two_stage or True in distinct:
        with_box_refine = True
    elif None in distinct:
        with_box_refine = None
    else:
        with_box_refine = False
    query_embed = state_dict.get('transformer.query_embed.weight')
    cls_weight = state_dict.get('bbox_head.cls_branches.0.weight')
    dec_attn = state_dict.get(_DEC_ATTN)
    return ModelVariant(
        as_two_stage=as_two_stage,
        with_box_refine=with_box_refine,
        num_feature_levels=int(levels),
        embed_dims=int(embed_dims),
        num_encoder_layers=_count_layers(keys, 'transformer.encoder.layers.'),
        num_decoder_layers=_count_layers(keys, 'transformer.decoder.layers.'),
        enc_attention_rows=int(state_dict[_ENC_ATTN].shape[0]),
        dec_attention_rows=int(dec_attn.shape[0]) if dec_attn is not None else 0,
        num_queries=int(query_embed.shape[0]) if query_embed is not None else None,
        num_classes=int(cls_weight.shape[0]) if cls_weight is not None else None)


def suggest_config(variant: ModelVariant) -> str:
    """The ``model = dict(...)`` override of the primitive R-50 config that fits ``variant``."""
    overrides = []
    if variant.with_box_refine:
        overrides.append('with_box_refine=True')
    if variant.as_two_stage:
        overrides.append('as_two_stage=True')
    if variant.num_feature_levels != 4:
        overrides.append(f'num_feature_levels={variant.num_feature_levels}')
    if variant.num_queries is not None and variant.num_queries != 300:
        overrides.append(f'num_queries={variant.num_queries}')
    transformer = []
    default_rows = 8 * variant.num_feature_levels * 4
    if variant.enc_attention_rows != default_rows:
        transformer.append(f'enc_num_points={_points(variant.enc_attention_rows, variant)}')
    if variant.dec_attention_rows != default_rows:
        transformer.append(f'dec_num_points={_points(variant.dec_attention_rows, variant)}')
    if variant.num_encoder_layers != 6:
        transformer.append(f'num_encoder_layers={variant.num_encoder_layers}')
    if variant.num_decoder_layers != 6:
        transformer.append(f'num_decoder_layers={variant.num_decoder_layers}')
    if variant.embed_dims != 256:
        transformer.append(f'embed_dims={variant.embed_dims}')
    if transformer:
        overrides.append(f'transformer=dict({", ".join(transformer)})')
    suggestion = f'model = dict({", ".join(overrides)})' if overrides else 'no override'
    if variant.num_feature_levels != 4:
        suggestion += ', with the backbone out_indices and neck num_outs to match'
    structure_is_default = not transformer and variant.num_feature_levels == 4 and (
        variant.num_queries in (None, 300))
    if structure_is_default and variant.name in _SHIPPED_R50_CONFIGS:
        suggestion += f' (as configs/deformable_detr/{_SHIPPED_R50_CONFIGS[variant.name]})'
    return suggestion


# shipped R-50 configs of the three variants (4 levels, K=4, 6+6 layers, 256 dims, 300 queries)
_SHIPPED_R50_CONFIGS = {
    'plain': 'deformable-detr_r50_16xb2-50e_coco.py',
    'refine': 'deformable-detr-refine_r50_16xb2-50e_coco.py',
    'two-stage': 'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
}


# Facts whose disagreement makes a checkpoint unusable for a model (a different class count
# is a fine-tuning head swap, not a different variant).
_STRUCTURAL = ('as_two_stage', 'with_box_refine', 'num_feature_levels', 'embed_dims',
               'num_encoder_layers', 'num_decoder_layers', 'enc_attention_rows',
               'dec_attention_rows')


def variant_mismatch(checkpoint: ModelVariant, model: ModelVariant) -> Optional[str]:
    """A message explaining why ``checkpoint`` cannot load into ``model``, or None if it can.

    Different ``num_classes`` or ``num_queries`` are not structural (fine-tuning on another dataset
    swaps the classification head); mmengine reports those as size mismatches and skips the tensors.
    """
    differences = [
        f'{f.name}: checkpoint {getattr(checkpoint, f.name)} vs model {getattr(model, f.name)}'
        for f in fields(ModelVariant)
        if f.name in _STRUCTURAL
        and None not in (getattr(checkpoint, f.name), getattr(model, f.name))
        and getattr(checkpoint, f.name) != getattr(model, f.name)]
    if not differences:
        return None
    return ('checkpoint and model are different Deformable DETR variants:\n  '
            + '\n  '.join(differences)
            + f'\ncheckpoint: {checkpoint.describe()}\nmodel:      {model.describe()}'
            + f'\na config that fits the checkpoint: {suggest_config(checkpoint)}')
