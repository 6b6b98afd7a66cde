"""Fixtures for the checkpoint tests: official-layout files from the reference listing, R-50 and
tiny
DeformDETR models, and mmdet's scope."""
import argparse
import copy
import json
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch

pytest.importorskip('mmcv.ops')  # mmdet's models need mmcv built with its ops
import mmdet_deformdetr  # noqa: E402,F401  (registers our modules, allow-lists checkpoint types)
from mmdet_deformdetr.checkpoint import convert_checkpoint_pre_hook  # noqa: E402

# official build name in the reference listing -> model overrides of our primitive R-50 config
R50_VARIANTS: Dict[str, dict] = {
    'plain': dict(),
    'refine': dict(with_box_refine=True),
    'twostage': dict(with_box_refine=True, as_two_stage=True),
    'single_scale': dict(num_feature_levels=1,
                         backbone=dict(out_indices=(3, )),
                         neck=dict(in_channels=[2048], num_outs=1)),
}


@pytest.fixture(scope='session', autouse=True)
def mmdet_scope() -> None:
    """mmdet's modules registered and 'mmdet' as default scope, as tools/train.py does."""
    from mmdet.utils import register_all_modules
    from mmengine.registry import init_default_scope

    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')


def with_conversion_hook(model: torch.nn.Module) -> torch.nn.Module:
    """The detector registers the hook itself once the lead applies the 2 lines (see
    load_hook.py); until then tests register it here so they test the conversion itself.
    test_hook_integration.py checks the detector does it."""
    hooks = getattr(model, '_load_state_dict_pre_hooks', {}).values()
    if not any(getattr(h, 'hook', None) is convert_checkpoint_pre_hook for h in hooks):
        model.register_load_state_dict_pre_hook(convert_checkpoint_pre_hook)
    return model


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
    return with_conversion_hook(MODELS.build(r50_model_cfg(variant, num_classes)))


@pytest.fixture(scope='session')
def official_listing(reference_dir: Path) -> Dict[str, Dict[str, list]]:
    return json.loads((reference_dir / 'official_deformable_detr_state_dict.json').read_text())


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


@pytest.fixture(scope='session')
def r50_model() -> Callable[[str], torch.nn.Module]:
    return build_r50


def _models_test_dir() -> str:
    return str(Path(__file__).resolve().parents[1] / 'models')


def tiny_models_module():
    """The model tests' tiny configs (tests/models/tiny_models.py), shared rather than copied."""
    import sys

    if _models_test_dir() not in sys.path:
        sys.path.insert(0, _models_test_dir())
    import tiny_models

    return tiny_models


def build_tiny(variant: str, **kwargs) -> torch.nn.Module:
    """A tiny DeformDETR (ResNet-18, 64 px) with the conversion hook, weights initialised."""
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(tiny_models_module().tiny_model_cfg(variant, **kwargs))
    model.init_weights()
    return with_conversion_hook(model)
