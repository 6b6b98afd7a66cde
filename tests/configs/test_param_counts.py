"""Parameter counts of the R-50 models against the official code's builds.

The official counts (40.07M plain, 40.85M refine, 41.18M two-stage, 34.07M
single-scale) are every parameter of the official model: its frozen BatchNorm keeps weight, bias and
statistics as buffers, and the frozen stem and layer1 convs still count. They are recomputed here
from the official state-dict listing
(tests/data/official_deformable_detr_state_dict.json).

Our count is of *trainable* parameters. The documented differences, and nothing else:
- the stem and layer1 convs, frozen in both (mmdet's `frozen_stages=1`), are not counted;
- our BN is mmdet's with `requires_grad=False`: weight and bias are frozen parameters, not counted;
- our classification branches have 80 outputs, the official ones 91 (raw COCO ids):
  11 * (256 + 1) fewer parameters per distinct branch (1 shared without refinement, 6 with,
  7 for two-stage: the extra encoder branch);
- input_proj: the official 1x1 and 3x3 convs have a bias; our ChannelMapper has `bias=True`, so
  there is no difference (asserted below, since GroupNorm does not make the bias redundant).
"""

import math
import re
from typing import Dict, List

import pytest

from tests.helpers.tiers import slow_except

OFFICIAL_MILLIONS = {'plain': 40.07, 'refine': 40.85, 'two_stage': 41.18, 'single_scale': 34.07}
EMBED_DIMS = 256
OFFICIAL_CLASSES, OUR_CLASSES = 91, 80
# build -> (config relative to configs/deformable_detr, distinct classification branches, overrides)
CASES = {
    'plain': ('deformable-detr_r50_16xb2-50e_coco.py', 1, {}),
    'refine': ('deformable-detr-refine_r50_16xb2-50e_coco.py', 6, {}),
    'two_stage': ('deformable-detr-refine-twostage_r50_16xb2-50e_coco.py', 7, {}),
    # the single-scale ablation with the official single-scale build's K = 4
    'single_scale': (
        'ablations/deformable-detr_r50-c5_ssattn-k1_16xb2-50e_coco.py',
        1,
        dict(enc_num_points=4, dec_num_points=4),
    ),
}


def _official_parameters(state: Dict[str, List[int]], build: str) -> Dict[str, int]:
    """numel of every distinct parameter (not buffer) of the official model, by key."""
    frozen_bn = {key[: -len('.running_mean')] for key in state if key.endswith('.running_mean')}
    parameters = {}
    for key, shape in state.items():
        if key.rsplit('.', 1)[0] in frozen_bn:  # FrozenBatchNorm2d: four buffers
            continue
        if key.startswith(('transformer.decoder.class_embed.', 'transformer.decoder.bbox_embed.')):
            continue  # aliases of the top-level heads, saved twice
        if build in ('plain', 'single_scale') and re.match(r'(class|bbox)_embed\.[1-9]\.', key):
            continue  # without refinement the per-layer heads are one shared module
        parameters[key] = math.prod(shape)
    return parameters


@pytest.mark.parametrize('build', sorted(CASES))
def test_official_counts_match_readme(official_listing, build):
    """The counting rule above reproduces the published numbers."""
    parameters = _official_parameters(official_listing[build], build)
    assert round(sum(parameters.values()) / 1e6, 2) == OFFICIAL_MILLIONS[build]


@pytest.mark.parametrize('build', slow_except(sorted(CASES), lambda build: build == 'two_stage'))
def test_trainable_parameters_match_official(official_listing, load_config, build):
    from mmdet.registry import MODELS

    relative_path, num_cls_branches, transformer_overrides = CASES[build]
    cfg = load_config(relative_path)
    cfg.model.transformer.update(transformer_overrides)
    model = MODELS.build(cfg.model)

    official = _official_parameters(official_listing[build], build)
    frozen_stem_and_layer1 = sum(
        numel
        for key, numel in official.items()
        if key.startswith(('backbone.0.body.conv1.', 'backbone.0.body.layer1.'))
    )
    assert frozen_stem_and_layer1 == 222_400  # conv1 9,408 + layer1 convs 212,992
    class_difference = num_cls_branches * (OFFICIAL_CLASSES - OUR_CLASSES) * (EMBED_DIMS + 1)
    expected = sum(official.values()) - frozen_stem_and_layer1 - class_difference

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected, (
        f'{build}: ours {trainable:,} trainable vs expected {expected:,} '
        f'(official {sum(official.values()):,})'
    )

    # distinct classification branches, each 80-way (parameters() counts shared modules once)
    cls_weights = {
        id(p)
        for name, p in model.named_parameters()
        if name.startswith('bbox_head.cls_branches.') and name.endswith('.weight')
    }
    assert len(cls_weights) == num_cls_branches
    # the input projection keeps the official bias
    state = model.state_dict()
    levels = cfg.model.num_feature_levels
    for level in range(min(levels, len(cfg.model.neck.in_channels))):
        assert f'neck.convs.{level}.conv.bias' in state


def test_frozen_parts_are_frozen(load_config):
    from mmdet.registry import MODELS

    model = MODELS.build(load_config('deformable-detr_r50_16xb2-50e_coco.py').model)
    for name, param in model.backbone.named_parameters():
        frozen_stage = name.startswith(('conv1.', 'bn1.', 'layer1.'))
        is_norm = re.search(r'(^|\.)(bn\d|downsample\.1)\.', name) is not None
        assert param.requires_grad == (not frozen_stage and not is_norm), name
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith('backbone'))
