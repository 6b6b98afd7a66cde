"""The three variants and every Table 2 ablation run `loss`, `predict` and `_forward` on small
images. For speed the backbone is swapped for a ResNet-18 (no download) and the transformer keeps 2
encoder + 2 decoder layers (enough for refinement to chain layers); the neck, levels, K, multi-scale
attention, number of queries, refinement and two-stage settings stay as each config sets them."""

from typing import Iterator, List

import pytest
import torch
from mmengine.config import Config
from torch import nn

from tests.helpers.tiers import slow_except

# the fast tier: the variant that runs every branch (two-stage + refine); the whole suite: all
FAST = 'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'

FORWARD_CONFIGS = [
    'deformable-detr_r50_16xb2-50e_coco.py',
    'deformable-detr-refine_r50_16xb2-50e_coco.py',
    'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
    'ablations/deformable-detr_r50-c5_ssattn-k1_16xb2-50e_coco.py',
    'ablations/deformable-detr_r50_ssattn-k1_16xb2-50e_coco.py',
    'ablations/deformable-detr_r50_ssattn-k4_16xb2-50e_coco.py',
    'ablations/deformable-detr_r50_msattn-k4_16xb2-50e_coco.py',
    'ablations/deformable-detr_r50_fpn_16xb2-50e_coco.py',
    'ablations/deformable-detr_r50_bifpn_16xb2-50e_coco.py',
]
# different sizes in one batch: padding masks matter; 100 x 75 gives odd sizes at strides 8..64.
# The padded batch must hold >= 300 tokens: two-stage keeps num_queries encoder proposals.
IMAGE_SHAPES = [(3, 160, 200), (3, 100, 75)]


def _shrink(cfg: Config) -> Config:
    cfg.model.transformer.update(num_encoder_layers=2, num_decoder_layers=2)
    return cfg


def _build(cfg: Config) -> nn.Module:
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def _batch(model: nn.Module, num_items: List[int], training: bool) -> dict:
    from mmdet.testing import demo_mm_inputs

    packed = demo_mm_inputs(
        batch_size=len(IMAGE_SHAPES), image_shapes=IMAGE_SHAPES, num_items=num_items, num_classes=80
    )
    return model.data_preprocessor(packed, training)


@pytest.mark.parametrize('relative_path', slow_except(FORWARD_CONFIGS, lambda path: path == FAST))
def test_state_dict_reflects_config(load_config, shrink_backbone, relative_path):
    """One level embedding per level; sampling offsets for K points per head (and per level with
    multi-scale attention; without it a query may predict offsets for one level only)."""
    cfg = _shrink(shrink_backbone(load_config(relative_path)))
    state = _build(cfg).state_dict()
    levels = cfg.model.num_feature_levels
    heads, points = cfg.model.transformer.num_heads, cfg.model.transformer.enc_num_points
    assert state['transformer.level_embed'].shape == (levels, 256)
    allowed = {heads * levels * points * 2}
    if not cfg.model.transformer.multi_scale_attention:
        allowed.add(heads * points * 2)
    for part in ('encoder.layers.0.self_attn', 'decoder.layers.0.cross_attn'):
        offsets = state[f'transformer.{part}.sampling_offsets.weight']
        assert offsets.shape[0] in allowed, part


@pytest.mark.parametrize('relative_path', slow_except(FORWARD_CONFIGS, lambda path: path == FAST))
def test_loss_predict_forward(load_config, shrink_backbone, relative_path):
    cfg = _shrink(shrink_backbone(load_config(relative_path)))
    model = _build(cfg)

    model.train()
    data = _batch(model, num_items=[3, 0], training=True)  # second image: no ground truth
    losses = model(**data, mode='loss')
    total = sum(value.sum() for key, value in losses.items() if 'loss' in key)
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.bbox_head.parameters())

    model.eval()
    data = _batch(model, num_items=[2, 1], training=False)
    with torch.no_grad():
        predictions = model(**data, mode='predict')
        raw = model(**data, mode='tensor')
    assert len(predictions) == len(IMAGE_SHAPES)
    for sample in predictions:
        instances = sample.pred_instances
        assert len(instances) == cfg.model.test_cfg.max_per_img
        assert instances.bboxes.shape == (len(instances), 4)
        assert ((instances.labels >= 0) & (instances.labels < 80)).all()
        assert ((instances.scores >= 0) & (instances.scores <= 1)).all()
    flat = list(_flatten(raw))
    assert flat and all(torch.isfinite(t).all() for t in flat)


def _flatten(output) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from _flatten(value)
    elif isinstance(output, (list, tuple)):
        for value in output:
            yield from _flatten(value)
