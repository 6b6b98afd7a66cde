"""Helpers of the checkpoint tests: official-layout files from the reference listing, and R-50
and tiny DeformDETR models (random weights, no download).

Imported as ``from ckpt_helpers import ...`` (pytest puts this folder on sys.path). They live here,
not in conftest.py: several test folders have a conftest.py, so ``from conftest import`` resolved to
whichever was imported first and broke runs that name several folders (``pytest tests/checkpoint
tests/configs``). The detector registers the checkpoint-conversion hook itself
(test_ckpt_tool_and_hook.py checks it), so models are used as built.
"""
import argparse
import copy
from pathlib import Path
from typing import Dict

import torch

# official build name in the reference listing -> model overrides of our primitive R-50 config
R50_VARIANTS: Dict[str, dict] = {
    'plain': dict(),
    'refine': dict(with_box_refine=True),
    'twostage': dict(with_box_refine=True, as_two_stage=True),
    'single_scale': dict(num_feature_levels=1,
                         backbone=dict(out_indices=(3, )),
                         neck=dict(in_channels=[2048], num_outs=1)),
}


def r50_model_cfg(variant: str, num_classes: int = 80) -> dict:
    """Our R-50 DeformDETR config (docs/architecture.md) for an official build, no pretrained
    init."""
    cfg = dict(
        type='DeformDETR', num_queries=300, num_feature_levels=4, with_box_refine=False,
        as_two_stage=False,
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=1),
        backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(1, 2, 3),
                      frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=False),
                      norm_eval=True, style='pytorch'),
        neck=dict(type='ChannelMapper', in_channels=[512, 1024, 2048], kernel_size=1,
                  out_channels=256, bias=True, act_cfg=None,
                  norm_cfg=dict(type='GN', num_groups=32), num_outs=4),
        positional_encoding=dict(normalize=True, offset=-0.5, temperature=10000),
        transformer=dict(type='DeformableDetrTransformer', embed_dims=256, num_heads=8,
                         num_encoder_layers=6, num_decoder_layers=6, feedforward_channels=1024,
                         dropout=0.1, activation='relu', enc_num_points=4, dec_num_points=4),
        bbox_head=dict(type='DeformDETRHead', num_classes=num_classes, sync_cls_avg_factor=True,
                       loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                                     loss_weight=2.0),
                       loss_bbox=dict(type='L1Loss', loss_weight=5.0),
                       loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
        train_cfg=dict(assigner=dict(type='HungarianAssigner', match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)])),
        test_cfg=dict(max_per_img=100))
    for key, value in copy.deepcopy(R50_VARIANTS[variant]).items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def build_r50(variant: str, num_classes: int = 80) -> torch.nn.Module:
    """Our R-50 DeformDETR of an official build, random weights (no download)."""
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    return MODELS.build(r50_model_cfg(variant, num_classes))


def make_official_state_dict(listing: Dict[str, list], seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random tensors with the listed keys and shapes, shared as the official code shares them:
    without refinement ``class_embed.i``/``bbox_embed.i`` are one module; the
    ``transformer.decoder.*_embed`` entries are aliases of the top-level heads."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in listing.items():
        tensor = torch.randn(shape, generator=generator)
        if key.endswith('running_var'):
            tensor = tensor.abs() + 0.5
        state_dict[key] = tensor
    refine = any(k.startswith('transformer.decoder.bbox_embed.') for k in listing)
    for key in listing:
        head, _, rest = key.partition('.')
        if head in ('class_embed', 'bbox_embed') and not refine:
            index, _, param = rest.partition('.')
            state_dict[key] = state_dict[f'{head}.0.{param}']
        if key.startswith(('transformer.decoder.class_embed.', 'transformer.decoder.bbox_embed.')):
            state_dict[key] = state_dict[key[len('transformer.decoder.'):]]
    return state_dict


def save_official_file(path: Path, state_dict: Dict[str, torch.Tensor], variant: str) -> Path:
    """``torch.save`` laid out as the official train script does (args is an argparse.Namespace)."""
    args = argparse.Namespace(lr=2e-4, with_box_refine=variant in ('refine', 'twostage'),
                              two_stage=variant == 'twostage',
                              num_feature_levels=1 if variant == 'single_scale' else 4,
                              enc_n_points=4, dec_n_points=4, num_queries=300,
                              dataset_file='coco', lr_backbone_names=['backbone.0'])
    torch.save({'model': state_dict, 'optimizer': {'state': {}, 'param_groups': []},
                'lr_scheduler': {'step_size': 40, 'last_epoch': 50}, 'epoch': 49, 'args': args},
               path)
    return path


def models_test_dir() -> str:
    return str(Path(__file__).resolve().parents[1] / 'models')


def tiny_models_module():
    """The model tests' tiny configs (tests/models/tiny_models.py), shared rather than copied."""
    import sys

    if models_test_dir() not in sys.path:
        sys.path.insert(0, models_test_dir())
    import tiny_models

    return tiny_models


def build_tiny(variant: str, **kwargs) -> torch.nn.Module:
    """A tiny DeformDETR (ResNet-18, 64 px), weights initialised."""
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(tiny_models_module().tiny_model_cfg(variant, **kwargs))
    model.init_weights()
    return model
