"""BiFPNNeck: output shapes (odd sizes too), gradients to every parameter, non-negative fusion
weights, clear errors, registry build."""

import math
from typing import List, Sequence, Tuple

import pytest
import torch
from mmdet.registry import MODELS

from mmdet_deformdetr.models.necks import BiFPNNeck
from mmdet_deformdetr.models.necks.bifpn import _FusionNode

GN = dict(type='GN', num_groups=4)


def _ceil_halves(size: int, times: int) -> int:
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


def _backbone_like(
    batch: int, channels: Sequence[int], image_hw: Tuple[int, int], first_stride_log2: int = 3
) -> List[torch.Tensor]:
    """Features shaped like ResNet's C3.. of an image (H, W): each stride-2 op halves with ceil."""
    height, width = image_hw
    return [
        torch.randn(
            batch,
            c,
            _ceil_halves(height, first_stride_log2 + level),
            _ceil_halves(width, first_stride_log2 + level),
        )
        for level, c in enumerate(channels)
    ]


@pytest.mark.parametrize('extra_downsample', ['conv', 'maxpool'])
@pytest.mark.parametrize('image_hw', [(64, 64), (100, 75), (97, 131), (33, 9), (8, 8)])
@pytest.mark.parametrize('num_outs', [3, 4, 5])
def test_output_shapes(image_hw, num_outs, extra_downsample):
    in_channels = [8, 16, 32]
    neck = BiFPNNeck(
        in_channels,
        out_channels=16,
        num_outs=num_outs,
        num_repeats=2,
        norm_cfg=GN,
        extra_downsample=extra_downsample,
    )
    inputs = _backbone_like(2, in_channels, image_hw)
    outputs = neck(inputs)

    assert isinstance(outputs, tuple) and len(outputs) == num_outs
    expected_hw = [tuple(x.shape[-2:]) for x in inputs]
    while len(expected_hw) < num_outs:  # extra levels: one more ceil-halving each
        expected_hw.append(tuple(math.ceil(s / 2) for s in expected_hw[-1]))
    for output, hw in zip(outputs, expected_hw):
        assert output.shape == (2, 16, *hw)
        assert torch.isfinite(output).all()


def test_sizes_that_are_not_ceil_halves():
    """Levels from a backbone whose strides floor instead of ceil still fuse (nearest resize)."""
    neck = BiFPNNeck([4, 4, 4], out_channels=8, num_outs=3, num_repeats=1, norm_cfg=GN)
    inputs = [torch.randn(1, 4, 15, 21), torch.randn(1, 4, 7, 10), torch.randn(1, 4, 3, 5)]
    outputs = neck(inputs)
    assert [tuple(o.shape[-2:]) for o in outputs] == [(15, 21), (7, 10), (3, 5)]


@pytest.mark.parametrize('extra_downsample', ['conv', 'maxpool'])
def test_every_parameter_gets_a_gradient(extra_downsample):
    torch.manual_seed(0)
    neck = BiFPNNeck(
        [8, 16, 32],
        out_channels=16,
        num_outs=4,
        num_repeats=2,
        norm_cfg=GN,
        extra_downsample=extra_downsample,
    )
    outputs = neck(_backbone_like(2, [8, 16, 32], (61, 83)))
    # a random projection of every output, so no gradient cancels by symmetry
    loss = sum((o * torch.randn_like(o)).sum() for o in outputs)
    loss.backward()
    for name, param in neck.named_parameters():
        assert param.grad is not None, f'{name} got no gradient'
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f'{name} got an all-zero gradient'


def test_fusion_weights_are_non_negative_and_normalized():
    node = _FusionNode(3, channels=4, norm_cfg=GN, act_cfg=dict(type='Swish'), eps=1e-4)
    with torch.no_grad():
        node.fusion_weights.copy_(torch.tensor([-2.0, 0.5, 3.0]))
    weights = node.normalized_weights()
    assert (weights >= 0).all()
    assert weights[0] == 0  # a negative raw weight is clipped, not used with its sign
    assert torch.allclose(weights.sum(), torch.tensor(3.5 / (3.5 + 1e-4)))

    # all raw weights negative: output stays finite thanks to eps
    with torch.no_grad():
        node.fusion_weights.fill_(-1.0)
    features = [torch.randn(1, 4, 5, 5) for _ in range(3)]
    assert torch.isfinite(node(features)).all()


def test_fusion_weights_stay_non_negative_during_training():
    torch.manual_seed(0)
    neck = BiFPNNeck([4, 8], out_channels=8, num_outs=3, num_repeats=1, norm_cfg=GN)
    optimizer = torch.optim.SGD(neck.parameters(), lr=10.0)
    for _ in range(3):  # a huge lr drives some raw weights negative
        optimizer.zero_grad()
        sum(o.sum() for o in neck(_backbone_like(1, [4, 8], (32, 32)))).backward()
        optimizer.step()
    nodes = [m for m in neck.modules() if isinstance(m, _FusionNode)]
    assert len(nodes) == 2 * (3 - 1)  # (L - 1) top-down + (L - 1) bottom-up nodes per layer
    assert any((node.fusion_weights < 0).any() for node in nodes)
    for node in nodes:
        assert (node.normalized_weights() >= 0).all()


def test_structure_and_parameter_count():
    """Fusion nodes: 2 inputs top-down, 3 inputs bottom-up except the coarsest (2)."""
    channels, levels = 16, 4
    neck = BiFPNNeck(
        [8, 16, 32], out_channels=channels, num_outs=levels, num_repeats=3, norm_cfg=GN
    )
    assert len(neck.layers) == 3
    layer = neck.layers[0]
    assert [n.fusion_weights.numel() for n in layer.top_down] == [2] * (levels - 1)
    assert [n.fusion_weights.numel() for n in layer.bottom_up] == [3] * (levels - 2) + [2]

    separable = 9 * channels + channels * channels + 2 * channels  # depthwise, pointwise, GN
    fusion = 2 * (levels - 1) + 3 * (levels - 2) + 2  # one scalar per fused input
    per_layer = 2 * (levels - 1) * separable + fusion
    inputs = sum(c * channels + 2 * channels for c in [8, 16, 32])  # 1x1 conv (no bias) + GN
    extra = 32 * channels * 9 + 2 * channels  # 3x3 stride-2 conv on the last input + GN
    assert sum(p.numel() for p in neck.parameters()) == inputs + extra + 3 * per_layer


def test_builds_from_registry():
    neck = MODELS.build(
        dict(type='BiFPNNeck', in_channels=[8, 16], out_channels=8, num_outs=3, norm_cfg=GN)
    )
    assert isinstance(neck, BiFPNNeck)
    outputs = neck(_backbone_like(1, [8, 16], (40, 40)))
    assert [o.shape[1] for o in outputs] == [8, 8, 8]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match='num_outs'):
        BiFPNNeck([8, 16, 32], out_channels=8, num_outs=2, norm_cfg=GN)
    with pytest.raises(ValueError, match='extra_downsample'):
        BiFPNNeck([8, 16], out_channels=8, num_outs=3, norm_cfg=GN, extra_downsample='bilinear')
    with pytest.raises(ValueError, match='num_repeats'):
        BiFPNNeck([8, 16], out_channels=8, num_outs=3, norm_cfg=GN, num_repeats=0)
    with pytest.raises(TypeError, match='in_channels'):
        BiFPNNeck(8, out_channels=8, num_outs=3, norm_cfg=GN)
    with pytest.raises(TypeError, match='unexpected keyword'):
        BiFPNNeck([8, 16], out_channels=8, num_outs=3, norm_cfg=GN, num_repeat=2)

    neck = BiFPNNeck([8, 16], out_channels=8, num_outs=3, norm_cfg=GN)
    with pytest.raises(ValueError, match='expected 2 input levels'):
        neck(_backbone_like(1, [8], (32, 32)))
    with pytest.raises(ValueError, match=r'input level 1 must be \(bs, 16, H, W\)'):
        neck(_backbone_like(1, [8, 12], (32, 32)))
