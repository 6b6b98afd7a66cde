"""Our R-50 DeformDETR (91 classes, as the official checkpoints) has the official model's
transformer and heads: same number of state-dict entries and the same multiset of shapes,
for the plain, refine and two-stage builds listed in the reference facts."""
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmcv.ops')  # mmdet's models need mmcv built with its ops

from mmdet.registry import MODELS  # noqa: E402
from tiny_models import use_mmdet_scope  # noqa: E402,F401  (imported for the mmdet scope)

FLAGS = {'plain': dict(), 'refine': dict(with_box_refine=True),
         'twostage': dict(with_box_refine=True, as_two_stage=True)}
# official aliases of the top-level heads (saved twice), and the torchvision backbone
_SKIP_OFFICIAL = ('backbone.', 'transformer.decoder.bbox_embed', 'transformer.decoder.class_embed')


def r50(**flags) -> torch.nn.Module:
    return MODELS.build(dict(
        type='DeformDETR', num_queries=300, num_feature_levels=4, **flags,
        backbone=dict(type='ResNet', depth=50, out_indices=(1, 2, 3), frozen_stages=1,
                      norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True),
        neck=dict(type='ChannelMapper', in_channels=[512, 1024, 2048], kernel_size=1,
                  out_channels=256, bias=True, act_cfg=None,
                  norm_cfg=dict(type='GN', num_groups=32), num_outs=4),
        positional_encoding=dict(normalize=True, offset=-0.5, temperature=10000),
        transformer=dict(type='DeformableDetrTransformer', embed_dims=256, num_heads=8,
                         num_encoder_layers=6, num_decoder_layers=6,
                         feedforward_channels=1024),
        bbox_head=dict(type='DeformDETRHead', num_classes=91)))


@pytest.mark.parametrize('build', list(FLAGS))
def test_same_shapes_as_official(build: str, reference_dir: Path) -> None:
    listing = json.loads((reference_dir / 'official_deformable_detr_state_dict.json').read_text())
    official = Counter(tuple(shape) for key, shape in listing[build].items()
                       if not key.startswith(_SKIP_OFFICIAL))
    ours = Counter(tuple(value.shape) for key, value in r50(**FLAGS[build]).state_dict().items()
                   if not key.startswith('backbone.'))
    assert ours == official
