"""Models and batches for the tests.

- tiny DeformDETR configs (ResNet-18, a few layers, 64 px images) that run in well under a second;
- the R-50 models of the shipped configs, loaded from the primitive config (never restated);
- mmdet's own ``DeformableDETR`` config that computes the same as one of ours (parity tests).
"""

import copy
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / 'configs' / 'deformable_detr'
PRIMITIVE_CONFIG = CONFIG_DIR / 'deformable-detr_r50_16xb2-50e_coco.py'

#: the paper's three variants, spelled as everywhere in the tests
VARIANTS: Dict[str, dict] = {
    'plain': dict(with_box_refine=False, as_two_stage=False),
    'refine': dict(with_box_refine=True, as_two_stage=False),
    'two_stage': dict(with_box_refine=True, as_two_stage=True),
}
NUM_CLASSES = 3


def tiny_model_cfg(
    variant: str = 'plain',
    embed_dims: int = 32,
    num_heads: int = 2,
    multi_scale_attention: bool = True,
    num_queries: int = 12,
    num_decoder_layers: int = 2,
) -> dict:
    """A DeformDETR config with the documented interface, sized for a 2-core CPU."""
    return copy.deepcopy(
        dict(
            type='DeformDETR',
            num_queries=num_queries,
            num_feature_levels=4,
            **VARIANTS[variant],
            data_preprocessor=dict(
                type='DetDataPreprocessor',
                mean=[123.675, 116.28, 103.53],
                std=[58.395, 57.12, 57.375],
                bgr_to_rgb=True,
                pad_size_divisor=1,
            ),
            backbone=dict(
                type='ResNet',
                depth=18,
                num_stages=4,
                out_indices=(1, 2, 3),
                frozen_stages=1,
                norm_cfg=dict(type='BN', requires_grad=False),
                norm_eval=True,
                style='pytorch',
            ),
            neck=dict(
                type='ChannelMapper',
                in_channels=[128, 256, 512],
                kernel_size=1,
                out_channels=embed_dims,
                bias=True,
                act_cfg=None,
                norm_cfg=dict(type='GN', num_groups=8),
                num_outs=4,
            ),
            positional_encoding=dict(normalize=True, offset=-0.5, temperature=10000),
            transformer=dict(
                type='DeformableDetrTransformer',
                embed_dims=embed_dims,
                num_heads=num_heads,
                num_encoder_layers=1,
                num_decoder_layers=num_decoder_layers,
                feedforward_channels=64,
                dropout=0.0,
                activation='relu',
                enc_num_points=2,
                dec_num_points=2,
                multi_scale_attention=multi_scale_attention,
            ),
            bbox_head=dict(
                type='DeformDETRHead',
                num_classes=NUM_CLASSES,
                sync_cls_avg_factor=True,
                loss_cls=dict(
                    type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0
                ),
                loss_bbox=dict(type='L1Loss', loss_weight=5.0),
                loss_iou=dict(type='GIoULoss', loss_weight=2.0),
            ),
            train_cfg=dict(
                assigner=dict(
                    type='HungarianAssigner',
                    match_costs=[
                        dict(type='FocalLossCost', weight=2.0),
                        dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                        dict(type='IoUCost', iou_mode='giou', weight=2.0),
                    ],
                )
            ),
            test_cfg=dict(max_per_img=20),
        )
    )


def build_tiny_model(variant: str = 'plain', **kwargs) -> torch.nn.Module:
    """A tiny DeformDETR (see :func:`tiny_model_cfg`), seeded, weights initialised."""
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


def make_batch(
    model: torch.nn.Module,
    image_shapes: Tuple[Tuple[int, int], ...] = ((64, 64), (56, 48)),
    num_gt: Optional[List[int]] = None,
    training: bool = True,
    seed: int = 0,
) -> dict:
    """Preprocessed batch (padded to the largest image) with random gt boxes."""
    from mmdet.testing import demo_mm_inputs

    torch.manual_seed(seed)
    packed = demo_mm_inputs(
        batch_size=len(image_shapes),
        image_shapes=[(3, h, w) for h, w in image_shapes],
        num_items=num_gt,
        num_classes=NUM_CLASSES,
    )
    return model.data_preprocessor(packed, training)


def load_config(path: Path) -> Config:
    """``Config.fromfile`` of a config of ours (its custom_imports load the plugin)."""
    return Config.fromfile(str(path))


def r50_model_cfg(
    variant: str = 'plain', num_classes: int = 80, overrides: Optional[dict] = None
) -> Config:
    """The ``model`` of the primitive R-50 config with a variant's flags, no pretrained download.

    Args:
        variant: a key of :data:`VARIANTS`.
        num_classes: classification channels (91 for the official COCO-id heads).
        overrides: merged into the model config (nested dicts, mmengine's merge rules).
    """
    cfg = load_config(PRIMITIVE_CONFIG)
    cfg.merge_from_dict(
        dict(
            model=dict(
                **VARIANTS[variant],
                backbone=dict(init_cfg=None),
                bbox_head=dict(num_classes=num_classes),
            )
        )
    )
    if overrides:
        cfg.merge_from_dict(dict(model=overrides))
    return cfg.model


def build_r50(
    variant: str = 'plain', num_classes: int = 80, overrides: Optional[dict] = None
) -> torch.nn.Module:
    """Our R-50 DeformDETR of the primitive config (random weights, seeded, no download)."""
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    return MODELS.build(r50_model_cfg(variant, num_classes, overrides))


def perturb_(
    model: torch.nn.Module, scale: float = 0.05, seed: int = 1, skip: Sequence[str] = ('backbone.',)
) -> torch.nn.Module:
    """Add seeded noise to every parameter outside ``skip``, so that no branch sits at its
    degenerate zero initialisation (zero attention logits, zero box deltas)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith(tuple(skip)):
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


def mmdet_cfg_like(ours: dict) -> dict:
    """mmdet's ``DeformableDETR`` config equivalent to one of our model configs (same sizes,
    flags, losses, assigner; dropout as ours)."""
    transformer = ours['transformer']
    dims, heads = transformer['embed_dims'], transformer['num_heads']
    dropout = transformer.get('dropout', 0.1)
    ffn = dict(
        embed_dims=dims, feedforward_channels=transformer['feedforward_channels'], ffn_drop=dropout
    )

    def deform_attn(points: int) -> dict:
        return dict(
            embed_dims=dims,
            num_heads=heads,
            num_levels=ours['num_feature_levels'],
            num_points=points,
            dropout=dropout,
            batch_first=True,
        )

    cfg = dict(
        type='DeformableDETR',
        num_queries=ours['num_queries'],
        num_feature_levels=ours['num_feature_levels'],
        with_box_refine=ours['with_box_refine'],
        as_two_stage=ours['as_two_stage'],
        data_preprocessor=ours['data_preprocessor'],
        backbone=ours['backbone'],
        neck=ours['neck'],
        encoder=dict(
            num_layers=transformer['num_encoder_layers'],
            layer_cfg=dict(self_attn_cfg=deform_attn(transformer['enc_num_points']), ffn_cfg=ffn),
        ),
        decoder=dict(
            num_layers=transformer['num_decoder_layers'],
            return_intermediate=True,
            post_norm_cfg=None,
            layer_cfg=dict(
                self_attn_cfg=dict(
                    embed_dims=dims, num_heads=heads, dropout=dropout, batch_first=True
                ),
                cross_attn_cfg=deform_attn(transformer['dec_num_points']),
                ffn_cfg=ffn,
            ),
        ),
        positional_encoding=dict(num_feats=dims // 2, **ours['positional_encoding']),
        bbox_head=dict(ours['bbox_head'], type='DeformableDETRHead', embed_dims=dims),
        train_cfg=ours['train_cfg'],
        test_cfg=ours['test_cfg'],
    )
    return copy.deepcopy(cfg)


def as_double(data: dict) -> dict:
    """A preprocessed batch in float64 (inputs and gt boxes)."""
    data = dict(data)
    data['inputs'] = data['inputs'].double()
    for sample in data['data_samples']:
        if 'gt_instances' in sample:
            sample.gt_instances.bboxes = sample.gt_instances.bboxes.double()
    return data
