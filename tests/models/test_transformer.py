"""DeformableDetrTransformer on its own (fake features), and the two-stage proposal helpers."""

import math

import pytest
import torch
from torch import nn

from mmdet_deformdetr.models.head import RegressionMLP
from mmdet_deformdetr.models.transformer import DeformableDetrTransformer
from mmdet_deformdetr.models.two_stage import (
    encoder_proposals,
    proposal_queries,
    proposal_sine_embedding,
)

DIMS = 32
SIZES = [(8, 8), (4, 4), (2, 2), (1, 1)]


def make_transformer(**overrides) -> DeformableDetrTransformer:
    args = dict(
        embed_dims=DIMS,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=2,
        feedforward_channels=64,
        dropout=0.0,
        enc_num_points=2,
        dec_num_points=2,
        num_queries=10,
        num_feature_levels=4,
    )
    args.update(overrides)
    return DeformableDetrTransformer(**args)


def make_inputs(batch_size: int = 2):
    torch.manual_seed(0)
    feats = [torch.randn(batch_size, DIMS, h, w) for h, w in SIZES]
    masks = [torch.zeros(batch_size, h, w, dtype=torch.bool) for h, w in SIZES]
    masks[0][1, 6:] = True  # image 2 padded at the bottom of level 0
    pos = [torch.randn(batch_size, DIMS, h, w) for h, w in SIZES]
    return feats, masks, pos


def head_branches(count: int, num_classes: int = 3):
    return (
        nn.ModuleList(RegressionMLP(DIMS, DIMS, 4) for _ in range(count)),
        nn.ModuleList(nn.Linear(DIMS, num_classes) for _ in range(count)),
    )


@pytest.mark.parametrize('refine,two_stage', [(False, False), (True, False), (True, True)])
def test_output_contract(refine: bool, two_stage: bool) -> None:
    transformer = make_transformer(with_box_refine=refine, as_two_stage=two_stage)
    reg_branches, cls_branches = head_branches(2 + two_stage)
    outputs = transformer(*make_inputs(), reg_branches=reg_branches, cls_branches=cls_branches)
    ref_dims = 4 if two_stage else 2
    assert outputs['hidden_states'].shape == (2, 2, 10, DIMS)
    assert outputs['init_reference'].shape == (2, 10, ref_dims)
    assert outputs['inter_references'].shape == (2, 2, 10, 4 if refine else 2)
    assert not outputs['inter_references'].requires_grad or not refine
    num_tokens = sum(h * w for h, w in SIZES)
    if two_stage:
        assert outputs['enc_outputs_class'].shape == (2, num_tokens, 3)
        assert outputs['enc_outputs_coord'].shape == (2, num_tokens, 4)
        assert not outputs['init_reference'].requires_grad  # proposals are detached
    else:
        assert outputs['enc_outputs_class'] is None and outputs['enc_outputs_coord'] is None


def test_parameter_layout() -> None:
    plain = {k for k in make_transformer().state_dict() if '.layers.' not in k}
    assert plain == {
        'level_embed',
        'query_embed.weight',
        'reference_points.weight',
        'reference_points.bias',
    }
    two_stage = {
        k
        for k in make_transformer(with_box_refine=True, as_two_stage=True).state_dict()
        if '.layers.' not in k
    }
    assert two_stage == {'level_embed'} | {
        f'{m}.{p}'
        for m in ('enc_output', 'enc_output_norm', 'pos_trans', 'pos_trans_norm')
        for p in ('weight', 'bias')
    }
    assert make_transformer().query_embed.weight.shape == (10, 2 * DIMS)


def test_missing_branches_and_levels_are_reported() -> None:
    with pytest.raises(ValueError, match='reg_branches'):
        make_transformer(with_box_refine=True)(*make_inputs())
    reg_branches, _ = head_branches(3)
    with pytest.raises(ValueError, match='cls_branches'):
        make_transformer(with_box_refine=True, as_two_stage=True)(
            *make_inputs(), reg_branches=reg_branches
        )
    feats, masks, pos = make_inputs()
    with pytest.raises(ValueError, match='4 feature levels'):
        make_transformer()(feats[:3], masks[:3], pos[:3])


@pytest.mark.parametrize(
    'overrides,message',
    [
        (dict(num_heads=3), 'divisible by num_heads'),
        (dict(embed_dims=6, num_heads=2), 'divisible by 4'),
    ],
    ids=['heads', 'sine-pairs'],
)
def test_bad_sizes_are_reported(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_transformer(**overrides)


def test_encoder_proposals_mask_padding_and_border() -> None:
    spatial_shapes = torch.tensor([[4, 4], [2, 2]])
    padding = torch.zeros(2, 20, dtype=torch.bool)
    padding[1, :16] = torch.tensor([[0, 0, 1, 1]] * 4, dtype=torch.bool).flatten()
    memory = torch.randn(2, 20, DIMS)
    enc_output, enc_norm = nn.Linear(DIMS, DIMS), nn.LayerNorm(DIMS)
    output_memory, proposals = encoder_proposals(
        memory, padding, spatial_shapes, enc_output, enc_norm
    )
    assert output_memory.shape == (2, 20, DIMS) and proposals.shape == (2, 20, 4)
    boxes = proposals.sigmoid()
    # image 1, level 0: centres of a 4 x 4 grid, side 0.05; level 1: side 0.1
    torch.testing.assert_close(boxes[0, 5], torch.tensor([0.375, 0.375, 0.05, 0.05]))
    torch.testing.assert_close(boxes[0, 16], torch.tensor([0.25, 0.25, 0.1, 0.1]))
    # image 2 has only 2 valid columns at level 0: centres are normalised by the valid width
    torch.testing.assert_close(boxes[1, 1], torch.tensor([0.75, 0.125, 0.05, 0.05]))
    # padded tokens: +inf proposals and memory zeroed before the transform
    assert torch.isinf(proposals[1, 2]).all() and torch.isinf(proposals[1, 3]).all()
    torch.testing.assert_close(output_memory[1, 2], enc_norm(enc_output(torch.zeros(DIMS))))
    # level 1 of image 2 is not padded (the padding mask says so), all finite
    assert torch.isfinite(proposals[1, 16:]).all()


def test_encoder_proposals_drop_near_border_boxes() -> None:
    # 1 x 1 levels, centre 0.5: side 0.05 * 2**l is inside (0.01, 0.99) up to level 4 (0.8);
    # level 5 (1.6) is dropped
    spatial_shapes = torch.tensor([[1, 1]] * 6)
    memory = torch.randn(1, 6, DIMS)
    _, proposals = encoder_proposals(
        memory, torch.zeros(1, 6, dtype=torch.bool), spatial_shapes, nn.Identity(), nn.Identity()
    )
    finite = torch.isfinite(proposals).all(-1)[0]
    assert finite.tolist() == [True, True, True, True, True, False]
    torch.testing.assert_close(proposals[0, 4, 2].sigmoid(), torch.tensor(0.8))
    assert math.isclose(0.05 * 2**3, proposals[0, 3, 3].sigmoid().item(), rel_tol=1e-6)


def test_proposal_queries_keep_top_objectness() -> None:
    scores = torch.tensor([[[0.1, 9.0], [2.0, -9.0], [1.0, 0.0], [3.0, 0.0]]])
    coords = torch.randn(1, 4, 4, requires_grad=True)
    pos_trans, pos_norm = nn.Linear(2 * DIMS, 2 * DIMS), nn.LayerNorm(2 * DIMS)
    query, query_pos, reference = proposal_queries(scores, coords, 2, pos_trans, pos_norm)
    assert query.shape == query_pos.shape == (1, 2, DIMS)
    # channel 0 ranks the proposals: tokens 3 then 1
    torch.testing.assert_close(reference, coords[:, [3, 1]].sigmoid().detach())
    assert not reference.requires_grad
    with pytest.raises(ValueError, match='num_queries=5'):
        proposal_queries(scores, coords, 5, pos_trans, pos_norm)


@pytest.mark.parametrize('embed_dims', [32, 256, 96])
def test_proposal_sine_embedding_has_two_embed_dims(embed_dims: int) -> None:
    proposals = torch.randn(2, 5, 4)
    embedding = proposal_sine_embedding(proposals, num_feats=embed_dims // 2)
    assert embedding.shape == (2, 5, 2 * embed_dims)
    # first pair of each coordinate: sin / cos of 2*pi*sigmoid(coordinate)
    angle = proposals[..., 0].sigmoid() * 2 * torch.pi
    torch.testing.assert_close(embedding[..., 0], angle.sin())
    torch.testing.assert_close(embedding[..., 1], angle.cos())


def test_proposal_sine_embedding_needs_pairs() -> None:
    with pytest.raises(ValueError, match='even'):
        proposal_sine_embedding(torch.randn(2, 5, 4), num_feats=3)
