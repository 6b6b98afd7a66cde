"""Parity with mmdet 3.x's own ``DeformableDETR``: same random weights (copied through
``convert_mmdet_state_dict``) give the same predictions and the same losses.

Both models run in float64 on CPU (mmdet through mmcv's grid_sample fallback, ours through our
op), on a padded two-image batch, so masks, valid ratios and two-stage proposal masking are
exercised; ours with ``batch_invariant_eval=False``, the official computation of a padded batch
(``tests/models/test_batch_invariance.py`` tests the default). Weights are perturbed after
mmdet's initialisation so that no branch sits at its degenerate zero init (zero attention
logits, zero box deltas).
"""

import copy
from typing import Tuple

import pytest
import torch
from mmdet.registry import MODELS

from mmdet_deformdetr.checkpoint.convert_mmdet import convert_mmdet_state_dict
from tests.helpers.models import (
    as_double,
    init_weights_quietly,
    make_batch,
    mmdet_cfg_like,
    perturb_,
    tiny_model_cfg,
)

# What docs/faithfulness.md claims, asserted in float64. Not 1e-12: mmdet computes a few things
# in float32 whatever the model's dtype (its sine positional embeddings, and the two-stage proposal
# grid, which moves two-stage boxes by up to ~3e-6 px on these 96 px images).
SCORE_TOLERANCE = 1e-7
BOX_TOLERANCE_PX = 1e-5
LOSS_TOLERANCE_REL = 1e-7


def build_pair(
    variant: str, embed_dims: int, num_heads: int, num_queries: int
) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(mmdet model, our model) in float64 with identical, perturbed weights."""
    ours_cfg = tiny_model_cfg(
        variant, embed_dims=embed_dims, num_heads=num_heads, num_queries=num_queries
    )
    # mmdet's computation of a padded batch at eval, which ours replaces by default
    ours_cfg['batch_invariant_eval'] = False
    torch.manual_seed(0)
    reference = MODELS.build(mmdet_cfg_like(ours_cfg))
    init_weights_quietly(reference)
    perturb_(reference)
    ours = MODELS.build(ours_cfg)
    ours.load_state_dict(convert_mmdet_state_dict(reference.state_dict()), strict=True)
    return reference.double(), ours.double()


# two-stage: mmdet's proposal embedding assumes embed_dims 256
CASES = [('plain', 64, 4, 12), ('refine', 64, 4, 12), ('two_stage', 256, 8, 30)]


@pytest.mark.parametrize(
    'variant,embed_dims,num_heads,num_queries', CASES, ids=[case[0] for case in CASES]
)
def test_predict_and_loss_match_mmdet(
    variant: str, embed_dims: int, num_heads: int, num_queries: int
) -> None:
    reference, ours = build_pair(variant, embed_dims, num_heads, num_queries)

    # predict: a padded batch of two differently sized images, and an unpadded one (mmdet then
    # skips its masks; ours always has them, all False)
    reference.eval()
    ours.eval()
    for image_shapes in (((96, 96), (80, 72)), ((80, 88), (80, 88))):
        data = as_double(make_batch(ours, image_shapes=image_shapes, training=False))
        with torch.no_grad():
            expected = reference.predict(data['inputs'], copy.deepcopy(data['data_samples']))
            actual = ours.predict(data['inputs'], copy.deepcopy(data['data_samples']))
        for expected_sample, actual_sample in zip(expected, actual):
            exp, act = expected_sample.pred_instances, actual_sample.pred_instances
            assert torch.equal(exp.labels, act.labels)
            assert (exp.scores - act.scores).abs().max() <= SCORE_TOLERANCE
            assert (exp.bboxes - act.bboxes).abs().max() <= BOX_TOLERANCE_PX

    # loss: same batch layout, with ground truth; every key and value must agree
    reference.train()
    ours.train()
    data = as_double(
        make_batch(ours, image_shapes=((96, 96), (80, 72)), num_gt=[3, 2], training=True, seed=1)
    )
    expected_losses = reference.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    actual_losses = ours.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    assert set(actual_losses) == set(expected_losses)
    for name, value in expected_losses.items():
        assert actual_losses[name].item() == pytest.approx(
            value.item(), rel=LOSS_TOLERANCE_REL, abs=1e-12
        ), name
