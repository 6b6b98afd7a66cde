"""Tiny Deformable DETR models and batches for the model tests (ResNet-18, 64 px images).

Imported by the tests as ``from tiny_models import ...`` (pytest puts this folder on sys.path),
after ``pytest.importorskip('mmcv.ops')``. Importing it registers mmdet's modules and sets the
'mmdet' default scope, as tools/train.py does (no conftest: the attention and neck tests in this
tree need neither mmdet nor mmcv).
"""
import copy
import logging
from typing import List, Optional, Tuple

import torch

import mmdet_deformdetr  # noqa: F401  (registers our modules)

VARIANTS = {
    'plain': dict(with_box_refine=False, as_two_stage=False),
    'refine': dict(with_box_refine=True, as_two_stage=False),
    'two_stage': dict(with_box_refine=True, as_two_stage=True),
}
NUM_CLASSES = 3


def tiny_model_cfg(variant: str = 'plain', embed_dims: int = 32, num_heads: int = 2,
                   multi_scale_attention: bool = True, num_queries: int = 12,
                   num_decoder_layers: int = 2) -> dict:
    """A DeformDETR config with the documented interface, sized for a 2-core CPU."""
    return copy.deepcopy(dict(
        type='DeformDETR',
        num_queries=num_queries,
        num_feature_levels=4,
        **VARIANTS[variant],
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               pad_size_divisor=1),
        backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(1, 2, 3),
                      frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=False),
                      norm_eval=True, style='pytorch'),
        neck=dict(type='ChannelMapper', in_channels=[128, 256, 512], kernel_size=1,
                  out_channels=embed_dims, bias=True, act_cfg=None,
                  norm_cfg=dict(type='GN', num_groups=8), num_outs=4),
        positional_encoding=dict(normalize=True, offset=-0.5, temperature=10000),
        transformer=dict(type='DeformableDetrTransformer', embed_dims=embed_dims,
                         num_heads=num_heads, num_encoder_layers=1,
                         num_decoder_layers=num_decoder_layers, feedforward_channels=64,
                         dropout=0.0, activation='relu', enc_num_points=2, dec_num_points=2,
                         multi_scale_attention=multi_scale_attention),
        bbox_head=dict(type='DeformDETRHead', num_classes=NUM_CLASSES, sync_cls_avg_factor=True,
                       loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                                     loss_weight=2.0),
                       loss_bbox=dict(type='L1Loss', loss_weight=5.0),
                       loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
        train_cfg=dict(assigner=dict(type='HungarianAssigner', match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)])),
        test_cfg=dict(max_per_img=20)))


def use_mmdet_scope() -> None:
    """mmdet's modules registered and 'mmdet' as default scope, as tools/train.py does."""
    from mmdet.utils import register_all_modules
    from mmengine.registry import init_default_scope
    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')


def build_tiny_model(variant: str = 'plain', **kwargs) -> torch.nn.Module:
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(variant, **kwargs))
    init_weights_quietly(model)
    return model


def init_weights_quietly(model: torch.nn.Module) -> None:
    """model.init_weights() without mmengine's per-parameter INFO report."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def make_batch(model: torch.nn.Module, image_shapes: Tuple[Tuple[int, int], ...] = ((64, 64),
                                                                                    (56, 48)),
               num_gt: Optional[List[int]] = None, training: bool = True, seed: int = 0
               ) -> dict:
    """Preprocessed batch (padded to the largest image) with random gt boxes."""
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(seed)
    packed = demo_mm_inputs(batch_size=len(image_shapes),
                            image_shapes=[(3, h, w) for h, w in image_shapes],
                            num_items=num_gt, num_classes=NUM_CLASSES)
    return model.data_preprocessor(packed, training)


use_mmdet_scope()
