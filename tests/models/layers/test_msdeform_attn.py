"""MSDeformAttn: official initialisation, parity with a from-the-paper float64 reference, masks,
layouts, mixed precision and input errors."""

import math
from typing import Dict, Sequence, Tuple

import pytest
import torch
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
from mmdet.registry import MODELS
from torch import Tensor

import mmdet_deformdetr  # noqa: F401 - registers MSDeformAttn
from mmdet_deformdetr.models.layers import MSDeformAttn

SHAPES = [(6, 5), (3, 4), (2, 2)]  # non-square levels; 46 keys
EMBED_DIMS, NUM_HEADS, NUM_POINTS = 32, 4, 3


def make_layer(
    num_levels: int = len(SHAPES),
    num_points: int = NUM_POINTS,
    impl: str = 'cpu',
    seed: int = 0,
    **kwargs,
) -> MSDeformAttn:
    """A layer in eval mode whose offset / weight predictors are randomised (the official init
    makes them constant, which would hide query-dependence in a parity test)."""
    torch.manual_seed(seed)
    layer = (
        MSDeformAttn(
            EMBED_DIMS, NUM_HEADS, num_levels, num_points, dropout=0.1, impl=impl, **kwargs
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        layer.sampling_offsets.weight.normal_(0, 0.3)
        layer.attention_weights.weight.normal_(0, 0.3)
        layer.attention_weights.bias.normal_(0, 0.3)
    return layer


def make_inputs(
    bs: int = 2,
    num_queries: int = 5,
    shapes: Sequence[Tuple[int, int]] = SHAPES,
    ref_dims: int = 2,
    seed: int = 1,
) -> Dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes)
    sizes = spatial_shapes.prod(1)
    num_keys = int(sizes.sum())

    def randn(*size: int) -> Tensor:
        return torch.randn(*size, generator=generator, dtype=torch.float64)

    reference_points = torch.rand(
        bs, num_queries, len(shapes), ref_dims, generator=generator, dtype=torch.float64
    )
    if ref_dims == 4:
        reference_points[..., 2:] = reference_points[..., 2:] * 0.5 + 0.05  # box sizes
    return dict(
        query=randn(bs, num_queries, EMBED_DIMS),
        reference_points=reference_points,
        value=randn(bs, num_keys, EMBED_DIMS),
        spatial_shapes=spatial_shapes,
        level_start_index=torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]]),
        query_pos=randn(bs, num_queries, EMBED_DIMS),
    )


def paper_reference(
    layer: MSDeformAttn,
    query: Tensor,
    reference_points: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    query_pos: Tensor,
    value_padding_mask: Tensor = None,
    **unused: Tensor,
) -> Tensor:
    """Eq. 3 of the paper written out with mmcv's sampling function (eval mode, no dropout)."""
    bs, num_queries, _ = query.shape
    heads, levels, points = layer.num_heads, layer.num_levels, layer.num_points
    projected = value @ layer.value_proj.weight.T + layer.value_proj.bias
    if value_padding_mask is not None:
        projected = projected * (~value_padding_mask)[..., None]
    projected = projected.view(bs, value.shape[1], heads, -1)
    query = query + query_pos
    offsets = (query @ layer.sampling_offsets.weight.T + layer.sampling_offsets.bias).view(
        bs, num_queries, heads, levels, points, 2
    )
    logits = (query @ layer.attention_weights.weight.T + layer.attention_weights.bias).view(
        bs, num_queries, heads, levels * points
    )
    weights = logits.softmax(-1).view(bs, num_queries, heads, levels, points)
    ref = reference_points[:, :, None, :, None, :]
    if reference_points.shape[-1] == 2:
        width_height = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1)
        locations = ref + offsets / width_height[:, None, :]
    else:
        locations = ref[..., :2] + offsets * ref[..., 2:] * (0.5 / points)
    sampled = multi_scale_deformable_attn_pytorch(projected, spatial_shapes, locations, weights)
    return sampled @ layer.output_proj.weight.T + layer.output_proj.bias


@pytest.mark.parametrize('offset_bias_zero', [False, True])
@pytest.mark.parametrize('num_levels,num_points', [(3, 3), (1, 1), (4, 4)])
def test_official_init(num_levels: int, num_points: int, offset_bias_zero: bool) -> None:
    layer = MSDeformAttn(EMBED_DIMS, 8, num_levels, num_points)
    if offset_bias_zero:  # init_weights() must restore the pattern after it was disturbed
        torch.nn.init.zeros_(layer.sampling_offsets.bias)
        layer.init_weights()
    assert torch.count_nonzero(layer.sampling_offsets.weight) == 0
    assert torch.count_nonzero(layer.attention_weights.weight) == 0
    assert torch.count_nonzero(layer.attention_weights.bias) == 0
    assert torch.count_nonzero(layer.value_proj.bias) == 0
    assert torch.count_nonzero(layer.output_proj.bias) == 0
    bias = layer.sampling_offsets.bias.detach().double().view(8, num_levels, num_points, 2)
    for head in range(8):
        angle = 2 * math.pi * head / 8
        for point in range(num_points):
            xy = bias[head, :, point]  # (L, 2): the same on every level
            # Distance k+1 in the max-norm, along the head's direction.
            assert torch.allclose(
                xy.abs().max(-1).values, torch.full((num_levels,), point + 1.0, dtype=torch.float64)
            )
            direction = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
            direction = direction / direction.abs().max()
            assert torch.allclose(xy, direction * (point + 1), atol=1e-6)


def test_projections_are_xavier_uniform() -> None:
    layer = MSDeformAttn(256, 8, 4, 4)
    bound = math.sqrt(6 / (256 + 256))
    for projection in (layer.value_proj, layer.output_proj):
        assert projection.weight.abs().max() <= bound
        assert projection.weight.std() > 0.5 * bound / math.sqrt(3)


@pytest.mark.parametrize('impl', ['cpu', 'pytorch'])
@pytest.mark.parametrize('ref_dims', [2, 4])
def test_float64_parity_with_paper_reference(ref_dims: int, impl: str) -> None:
    layer = make_layer(impl=impl)
    inputs = make_inputs(ref_dims=ref_dims)
    torch.testing.assert_close(
        layer(**inputs), paper_reference(layer, **inputs), rtol=1e-10, atol=1e-10
    )


def test_single_level_single_point() -> None:
    layer = make_layer(num_levels=1, num_points=1)
    inputs = make_inputs(shapes=[(4, 7)], bs=3)
    torch.testing.assert_close(layer(**inputs), paper_reference(layer, **inputs))


def test_padding_is_ignored() -> None:
    """Values at padded keys must not influence the output, whatever they hold."""
    layer = make_layer()
    inputs = make_inputs()
    mask = torch.zeros(inputs['value'].shape[:2], dtype=torch.bool)
    mask[0, 20:30] = True
    mask[1, -4:] = True
    masked = layer(**inputs, value_padding_mask=mask)
    torch.testing.assert_close(masked, paper_reference(layer, **inputs, value_padding_mask=mask))
    inputs['value'] = inputs['value'].masked_fill(mask[..., None], 1e6)
    torch.testing.assert_close(layer(**inputs, value_padding_mask=mask), masked)


def test_batch_first_false_and_default_value() -> None:
    layer = make_layer()
    inputs = make_inputs(num_queries=46)
    inputs['value'] = None  # self-attention: value defaults to the query (without query_pos)
    expected = layer(**inputs)
    torch.testing.assert_close(
        expected, paper_reference(layer, **{**inputs, 'value': inputs['query']})
    )
    layer.batch_first = False
    seq_first = {
        k: v.transpose(0, 1) if k in ('query', 'query_pos') else v for k, v in inputs.items()
    }
    torch.testing.assert_close(layer(**seq_first).transpose(0, 1), expected)


def test_every_parameter_gets_a_gradient() -> None:
    layer = MSDeformAttn(EMBED_DIMS, NUM_HEADS, len(SHAPES), NUM_POINTS).double()
    layer(**make_inputs()).square().sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize('scale', [1.0, 300.0])
def test_bf16_autocast_matches_float32(scale: float) -> None:
    torch.manual_seed(0)
    layer = MSDeformAttn(256, 8, 4, 4, dropout=0.0).eval()
    shapes = [(25, 38), (13, 19), (7, 10), (4, 5)]  # the value of a ~200x300 image
    inputs = {
        k: v.float() if v.is_floating_point() else v
        for k, v in make_inputs(bs=1, num_queries=100, shapes=shapes).items()
    }
    inputs['query'] = torch.randn(1, 100, 256) * scale
    inputs['query_pos'] = torch.randn(1, 100, 256)
    inputs['value'] = torch.randn(1, inputs['value'].shape[1], 256) * scale
    want = layer(**inputs)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = layer(**inputs)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    # bf16 keeps 8 significant bits: errors of a few 1e-3 relative to the output scale are normal.
    relative_error = (got.float() - want).abs().max() / want.abs().max()
    assert relative_error < 2e-2, relative_error


def test_built_from_registry() -> None:
    layer = MODELS.build(
        dict(
            type='MSDeformAttn', embed_dims=64, num_heads=4, num_levels=2, num_points=2, dropout=0.0
        )
    )
    assert isinstance(layer, MSDeformAttn)
    assert {n.split('.')[0] for n, _ in layer.named_parameters()} == {
        'sampling_offsets',
        'attention_weights',
        'value_proj',
        'output_proj',
    }


@pytest.mark.parametrize(
    'kwargs,match',
    [
        (dict(embed_dims=30, num_heads=8), 'divisible by num_heads'),
        (dict(num_points=0), 'must be >= 1'),
        (dict(impl='cuda_fast'), 'impl must be one of'),
    ],
)
def test_bad_construction_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MSDeformAttn(**kwargs)


@pytest.mark.parametrize(
    'change,match',
    [
        (
            lambda x: x.update(reference_points=x['reference_points'][..., :1].repeat(1, 1, 1, 3)),
            'last dim must be 2 or 4',
        ),
        (lambda x: x.update(value=x['value'][:, :-1]), r'need sum\(H \* W\) = 46'),
        (lambda x: x.update(reference_points=x['reference_points'][:, :, :2]), 'reference_points'),
        (lambda x: x.update(query=x['query'][..., :16], query_pos=None), 'query'),
    ],
)
def test_bad_forward_inputs_raise(change, match: str) -> None:
    layer = make_layer()
    inputs = make_inputs()
    change(inputs)
    with pytest.raises(ValueError, match=match):
        layer(**inputs)


def test_spatial_shapes_is_required_in_the_official_order() -> None:
    """``(query, reference_points, value, spatial_shapes, level_start_index, ...)`` as the
    official module; omitting the shapes is refused by name (no None default to reject later)."""
    layer = make_layer().eval()
    inputs = make_inputs()
    positional = [inputs[name] for name in ('query', 'reference_points', 'value')]
    positional += [inputs['spatial_shapes'], inputs['level_start_index']]
    torch.testing.assert_close(
        layer(*positional, query_pos=inputs['query_pos']), layer(**inputs), rtol=0, atol=0
    )
    del inputs['spatial_shapes']
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'spatial_shapes'"):
        layer(**inputs)
