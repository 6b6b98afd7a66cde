"""Parity with mmdet 3.x's own ``DeformableDETR``: same random weights (copied through
``convert_mmdet_state_dict``) give the same predictions and the same losses.

Both models run in float64 on CPU (mmdet through mmcv's grid_sample fallback, ours through our
op), on a padded two-image batch, so masks, valid ratios and two-stage proposal masking are
exercised. Weights are perturbed after mmdet's initialisation so that no branch sits at its
degenerate zero init (zero attention logits, zero box deltas).
"""
import copy
from typing import Tuple

import pytest
import torch
from mmdet.registry import MODELS

from mmdet_deformdetr.checkpoint.convert_mmdet import convert_mmdet_state_dict
from tests.helpers.models import init_weights_quietly, make_batch, tiny_model_cfg

TOLERANCE = 1e-4


def mmdet_cfg_like(ours: dict) -> dict:
    """mmdet's ``DeformableDETR`` config equivalent to one of our tiny configs."""
    transformer = ours['transformer']
    dims, heads = transformer['embed_dims'], transformer['num_heads']
    ffn = dict(embed_dims=dims, feedforward_channels=transformer['feedforward_channels'],
               ffn_drop=0.0)

    def deform_attn(points: int) -> dict:
        return dict(embed_dims=dims, num_heads=heads, num_levels=ours['num_feature_levels'],
                    num_points=points, dropout=0.0, batch_first=True)

    cfg = dict(
        type='DeformableDETR',
        num_queries=ours['num_queries'], num_feature_levels=ours['num_feature_levels'],
        with_box_refine=ours['with_box_refine'], as_two_stage=ours['as_two_stage'],
        data_preprocessor=ours['data_preprocessor'], backbone=ours['backbone'],
        neck=ours['neck'],
        encoder=dict(num_layers=transformer['num_encoder_layers'], layer_cfg=dict(
            self_attn_cfg=deform_attn(transformer['enc_num_points']), ffn_cfg=ffn)),
        decoder=dict(num_layers=transformer['num_decoder_layers'], return_intermediate=True,
                     post_norm_cfg=None, layer_cfg=dict(
                         self_attn_cfg=dict(embed_dims=dims, num_heads=heads, dropout=0.0,
                                            batch_first=True),
                         cross_attn_cfg=deform_attn(transformer['dec_num_points']),
                         ffn_cfg=ffn)),
        positional_encoding=dict(num_feats=dims // 2, **ours['positional_encoding']),
        bbox_head=dict(ours['bbox_head'], type='DeformableDETRHead', embed_dims=dims),
        train_cfg=ours['train_cfg'], test_cfg=ours['test_cfg'])
    return copy.deepcopy(cfg)


def build_pair(variant: str, embed_dims: int, num_heads: int,
               num_queries: int) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(mmdet model, our model) in float64 with identical, perturbed weights."""
    ours_cfg = tiny_model_cfg(variant, embed_dims=embed_dims, num_heads=num_heads,
                              num_queries=num_queries)
    torch.manual_seed(0)
    reference = MODELS.build(mmdet_cfg_like(ours_cfg))
    init_weights_quietly(reference)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if not name.startswith('backbone.'):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    ours = MODELS.build(ours_cfg)
    ours.load_state_dict(convert_mmdet_state_dict(reference.state_dict()), strict=True)
    return reference.double(), ours.double()


def as_double(data: dict) -> dict:
    data = dict(data)
    data['inputs'] = data['inputs'].double()
    for sample in data['data_samples']:
        if 'gt_instances' in sample:
            sample.gt_instances.bboxes = sample.gt_instances.bboxes.double()
    return data


# two-stage: mmdet's proposal embedding assumes embed_dims 256
CASES = [('plain', 64, 4, 12), ('refine', 64, 4, 12), ('two_stage', 256, 8, 30)]


@pytest.mark.parametrize('variant,embed_dims,num_heads,num_queries', CASES,
                         ids=[case[0] for case in CASES])
def test_predict_and_loss_match_mmdet(variant: str, embed_dims: int, num_heads: int,
                                      num_queries: int) -> None:
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
            assert (exp.scores - act.scores).abs().max() <= TOLERANCE
            assert (exp.bboxes - act.bboxes).abs().max() <= TOLERANCE

    # loss: same batch layout, with ground truth; every key and value must agree
    reference.train()
    ours.train()
    data = as_double(make_batch(ours, image_shapes=((96, 96), (80, 72)), num_gt=[3, 2],
                                training=True, seed=1))
    expected_losses = reference.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    actual_losses = ours.loss(data['inputs'], copy.deepcopy(data['data_samples']))
    assert set(actual_losses) == set(expected_losses)
    for name, value in expected_losses.items():
        assert abs(value.item() - actual_losses[name].item()) <= TOLERANCE, name
