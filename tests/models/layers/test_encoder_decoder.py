"""Encoder / decoder layers, and the attention of the multi_scale_attention=False ablation."""

import pytest
import torch

from mmdet_deformdetr.models.layers import (
    DeformableDecoder,
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
    MSDeformAttn,
    SingleScaleDeformAttn,
)
from mmdet_deformdetr.models.layers.activation import build_activation
from mmdet_deformdetr.ops import multi_scale_deformable_attn_reference

DIMS, HEADS, POINTS = 16, 2, 2
SHAPES = torch.tensor([[4, 6], [2, 3]])
STARTS = torch.tensor([0, 24])
NUM_TOKENS = 24 + 6


def layer_args(multi_scale: bool) -> dict:
    return dict(
        embed_dims=DIMS,
        num_heads=HEADS,
        num_levels=2,
        num_points=POINTS,
        feedforward_channels=32,
        dropout=0.0,
        activation='relu',
        multi_scale_attention=multi_scale,
    )


def make_encoder(multi_scale: bool = True, num_layers: int = 1) -> DeformableEncoder:
    return DeformableEncoder(DeformableEncoderLayer(**layer_args(multi_scale)), num_layers)


def randomise(module: torch.nn.Module) -> None:
    """Move zero-initialised weights off zero so every input can matter."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn_like(param) * 0.3)


def run_encoder(encoder: DeformableEncoder, feat: torch.Tensor) -> torch.Tensor:
    pos = torch.linspace(-1, 1, NUM_TOKENS * DIMS).view(1, NUM_TOKENS, DIMS)
    mask = torch.zeros(1, NUM_TOKENS, dtype=torch.bool)
    return encoder(feat, pos, mask, SHAPES, STARTS, torch.ones(1, 2, 2))


@pytest.mark.parametrize('multi_scale', [True, False])
def test_encoder_levels_mix_only_with_multi_scale_attention(multi_scale: bool) -> None:
    encoder = make_encoder(multi_scale)
    randomise(encoder)
    feat = torch.randn(1, NUM_TOKENS, DIMS)
    changed = feat.clone()
    changed[:, 24:] += 1.0  # change level 1 only
    level0_before = run_encoder(encoder, feat)[:, :24]
    level0_after = run_encoder(encoder, changed)[:, :24]
    assert torch.allclose(level0_before, level0_after) == (not multi_scale)
    # single-level mode builds its attention with one level
    assert encoder.layers[0].self_attn.num_levels == (2 if multi_scale else 1)


def test_encoder_layer_parameter_names() -> None:
    encoder = make_encoder()
    names = {name.rsplit('.', 1)[0] for name, _ in encoder.layers[0].named_parameters()}
    assert names == {
        'self_attn.sampling_offsets',
        'self_attn.attention_weights',
        'self_attn.value_proj',
        'self_attn.output_proj',
        'norm1',
        'linear1',
        'linear2',
        'norm2',
    }


def make_decoder(multi_scale: bool = True, num_layers: int = 2) -> DeformableDecoder:
    return DeformableDecoder(DeformableDecoderLayer(**layer_args(multi_scale)), num_layers)


def run_decoder(decoder: DeformableDecoder, reference_points: torch.Tensor, reg_branches=None):
    torch.manual_seed(1)
    query, query_pos = torch.randn(1, 5, DIMS), torch.randn(1, 5, DIMS)
    memory = torch.randn(1, NUM_TOKENS, DIMS)
    return decoder(
        query,
        query_pos,
        reference_points,
        memory,
        None,
        SHAPES,
        STARTS,
        torch.ones(1, 2, 2),
        reg_branches,
    )


def test_decoder_layer_parameter_names() -> None:
    names = {name.rsplit('.', 1)[0] for name, _ in make_decoder().layers[0].named_parameters()}
    assert names == {
        'self_attn',
        'self_attn.out_proj',
        'cross_attn.sampling_offsets',
        'cross_attn.attention_weights',
        'cross_attn.value_proj',
        'cross_attn.output_proj',
        'norm1',
        'norm2',
        'norm3',
        'linear1',
        'linear2',
    }
    assert isinstance(make_decoder().layers[0].self_attn, torch.nn.MultiheadAttention)


def test_decoder_without_refinement_keeps_references() -> None:
    references = torch.rand(1, 5, 2)
    hidden_states, inter_references = run_decoder(make_decoder(), references)
    assert hidden_states.shape == (2, 1, 5, DIMS)
    assert inter_references.shape == (2, 1, 5, 2)
    assert torch.equal(inter_references[1], references)


class ConstantDelta(torch.nn.Module):
    """A stand-in regression branch: the same logit offset for every query."""

    def __init__(self, delta: torch.Tensor) -> None:
        super().__init__()
        self.delta = torch.nn.Parameter(delta)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.delta.expand(*hidden.shape[:-1], 4) + 0 * hidden[..., :1]


def test_decoder_refinement_uses_branch_i_and_detaches() -> None:
    references = torch.tensor([[[0.3, 0.6]]]).expand(1, 5, 2)
    branches = [
        ConstantDelta(torch.tensor([0.5, 0.0, -1.0, 0.0])),
        ConstantDelta(torch.tensor([0.0, 0.0, 1.0, 0.0])),
    ]
    _, inter_references = run_decoder(make_decoder(), references, branches)
    # layer 0: a 2-d point moves its centre; the size comes from the delta alone
    logit = torch.logit(torch.tensor([0.3, 0.6]))
    expected_0 = torch.cat(
        [(logit + torch.tensor([0.5, 0.0])).sigmoid(), torch.tensor([-1.0, 0.0]).sigmoid()]
    )
    torch.testing.assert_close(inter_references[0, 0, 0], expected_0)
    # layer 1: a 4-d box adds the delta to all four logits
    expected_1 = (torch.logit(expected_0) + torch.tensor([0.0, 0.0, 1.0, 0.0])).sigmoid()
    torch.testing.assert_close(inter_references[1, 0, 0], expected_1)
    assert not inter_references.requires_grad


def test_stacks_are_independent_copies_of_one_layer() -> None:
    decoder = make_decoder(num_layers=3)
    assert len({id(layer) for layer in decoder.layers}) == 3
    first = decoder.layers[0].state_dict()
    assert all(
        torch.equal(value, first[key])
        for layer in decoder.layers
        for key, value in layer.state_dict().items()
    )
    with torch.no_grad():
        decoder.layers[1].linear1.weight.add_(1.0)
    assert not torch.equal(decoder.layers[1].linear1.weight, decoder.layers[0].linear1.weight)


def test_every_level_attention_averages_independent_levels() -> None:
    attention = SingleScaleDeformAttn(
        DIMS, HEADS, num_levels=2, num_points=POINTS, dropout=0.0, own_level=False, impl='pytorch'
    ).double()
    randomise(attention)
    query = torch.randn(1, 5, DIMS, dtype=torch.float64)
    value = torch.randn(1, NUM_TOKENS, DIMS, dtype=torch.float64)
    reference = torch.rand(1, 5, 2, 2, dtype=torch.float64)
    output = attention(query, reference, value, SHAPES, STARTS)

    # by hand: per level, softmax over its K points only, sample that level, then average
    projected = attention.value_proj(value).view(1, NUM_TOKENS, HEADS, DIMS // HEADS)
    offsets = attention.sampling_offsets(query).view(1, 5, HEADS, 2, POINTS, 2)
    logits = attention.attention_weights(query).view(1, 5, HEADS, 2, POINTS)
    per_level = []
    for level, (start, end) in enumerate(((0, 24), (24, NUM_TOKENS))):
        height, width = SHAPES[level].tolist()
        locations = reference[:, :, None, level : level + 1, None, :] + offsets[
            :, :, :, level : level + 1
        ] / torch.tensor([width, height])
        per_level.append(
            multi_scale_deformable_attn_reference(
                projected[:, start:end],
                SHAPES[level : level + 1],
                locations,
                logits[:, :, :, level : level + 1].softmax(-1),
            )
        )
    expected = attention.output_proj(sum(per_level) / 2)
    torch.testing.assert_close(output, expected)


@pytest.mark.parametrize('own_level', [True, False], ids=['encoder', 'decoder'])
def test_single_scale_attention_has_msdeform_attn_layout(own_level: bool) -> None:
    ours = SingleScaleDeformAttn(DIMS, HEADS, 2, POINTS, own_level=own_level)
    official = MSDeformAttn(DIMS, HEADS, 1 if own_level else 2, POINTS)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in official.state_dict().items()
    }
    # same initial sampling pattern (ring per head, distance k + 1)
    torch.testing.assert_close(ours.sampling_offsets.bias, official.sampling_offsets.bias)


def test_own_level_attention_is_one_level_attention_per_level() -> None:
    """Encoder queries of level l see only level l: each slice equals a one-level MSDeformAttn."""
    attention = SingleScaleDeformAttn(
        DIMS, HEADS, num_levels=2, num_points=POINTS, dropout=0.0, own_level=True, impl='pytorch'
    ).double()
    randomise(attention)
    single = MSDeformAttn(DIMS, HEADS, 1, POINTS, dropout=0.0, impl='pytorch').double()
    single.load_state_dict(attention.state_dict())
    tokens = torch.randn(1, NUM_TOKENS, DIMS, dtype=torch.float64)
    pos = torch.randn(1, NUM_TOKENS, DIMS, dtype=torch.float64)
    reference = torch.rand(1, NUM_TOKENS, 2, 2, dtype=torch.float64)
    output = attention(tokens, reference, tokens, SHAPES, STARTS, None, pos)
    for level, (start, end) in enumerate(((0, 24), (24, NUM_TOKENS))):
        expected = single(
            tokens[:, start:end],
            reference[:, start:end, level : level + 1],
            tokens[:, start:end],
            SHAPES[level : level + 1],
            STARTS[:1],
            None,
            pos[:, start:end],
        )
        torch.testing.assert_close(output[:, start:end], expected)


def test_build_activation_rejects_unknown_names() -> None:
    assert isinstance(build_activation('gelu'), torch.nn.GELU)
    with pytest.raises(ValueError, match='glu'):
        build_activation('glu')
