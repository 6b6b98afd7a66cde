"""BiFPN neck (Tan et al., "EfficientDet", CVPR 2020), for the "+ BiFPN" row of Deformable DETR's
Table 2.

mmdet 3.3 ships no BiFPN, so it is written here from the paper:

- every input level is projected to ``out_channels`` by a 1x1 conv + norm; levels beyond the inputs
  are made by stride-2 downsampling (a 3x3 stride-2 conv + norm on the last input, as Deformable
  DETR makes its C6, or a 3x3 stride-2 max pool as EfficientDet does);
- one BiFPN layer is a top-down pass then a bottom-up pass; every fusion node computes
  ``sum_i w_i * x_i / (eps + sum_i w_i)`` with ``w_i = relu(learned)`` ("fast normalized fusion",
  EfficientDet Eq. 3), then activation -> depthwise 3x3 conv -> pointwise 1x1 conv -> norm;
- the layer is repeated ``num_repeats`` times with separate weights.

Per-layer flow for 4 levels (P3 finest ... P6 coarsest; ``up``/``down`` resize to the target
level)::

    P6_in --------------------------------------> (+) -> P6_out
      |                                             ^
      up                                          down
      v                                             |
    P5_in -> (+) -> P5_td ----------------------> (+) -> P5_out
               ^      |                             ^
              ...    up                           down
                      v                             |
    P3_in -----------(+) ---------------------------+--> P3_out  (= P3_td)

EfficientDet's first layer feeds a second, separately projected copy of each input into the
bottom-up pass; here both passes read the same projection, which keeps the neck a clean stack of
identical layers (a deliberate simplification).
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmdet.utils import ConfigType, OptMultiConfig
from mmengine.model import BaseModule
from torch import Tensor, nn

_EXTRA_DOWNSAMPLE = ('conv', 'maxpool')


def _resize_to(feature: Tensor, size: Tuple[int, int]) -> Tensor:
    """Resize ``feature`` (bs, C, H, W) to ``size`` = (H', W') of a neighbouring level.

    Upsampling is nearest neighbour (EfficientDet). Downsampling is a 3x3 stride-2 max pool, whose
    output ceil(H / 2) matches the stride-2 convs of ResNet; when a level's size is not the
    ceil-half of its finer neighbour (inputs from another backbone), a nearest resize makes the
    sizes agree instead of failing on odd shapes.

    Returns:
        Tensor: (bs, C, H', W').
    """
    height, width = feature.shape[-2:]
    if (height, width) == tuple(size):
        return feature
    if height > size[0] or width > size[1]:
        feature = F.max_pool2d(feature, kernel_size=3, stride=2, padding=1)
        if tuple(feature.shape[-2:]) == tuple(size):
            return feature
    return F.interpolate(feature, size=size, mode='nearest')


class _SeparableConvNorm(nn.Sequential):
    """Depthwise 3x3 conv -> pointwise 1x1 conv -> norm (no bias: the norm's shift replaces it)."""

    def __init__(self, channels: int, norm_cfg: ConfigType) -> None:
        depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        _, norm = build_norm_layer(norm_cfg, channels)
        super().__init__(depthwise, pointwise, norm)


class _FusionNode(nn.Module):
    """Fast normalized fusion of ``num_inputs`` same-shape features, then act + separable conv.

    Args:
        num_inputs: number of fused features (2 or 3).
        channels: channels of every input and of the output.
        norm_cfg: norm after the separable conv.
        act_cfg: activation applied to the fused feature (EfficientDet: swish).
        eps: keeps the normalisation finite when every weight is clipped to zero.
    """

    def __init__(
        self, num_inputs: int, channels: int, norm_cfg: ConfigType, act_cfg: ConfigType, eps: float
    ) -> None:
        super().__init__()
        # initialised to 1 so that training starts from a plain average of the inputs
        self.fusion_weights = nn.Parameter(torch.ones(num_inputs))
        self.eps = eps
        self.act = build_activation_layer(act_cfg)
        self.conv = _SeparableConvNorm(channels, norm_cfg)

    def normalized_weights(self) -> Tensor:
        """(num_inputs,) non-negative weights summing to just under 1 (EfficientDet Eq. 3)."""
        weights = F.relu(self.fusion_weights)
        return weights / (weights.sum() + self.eps)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """inputs: ``num_inputs`` tensors (bs, C, H, W) -> (bs, C, H, W)."""
        if len(inputs) != self.fusion_weights.numel():
            raise ValueError(f'expected {self.fusion_weights.numel()} inputs, got {len(inputs)}')
        weights = self.normalized_weights()
        fused = sum(weight * feature for weight, feature in zip(weights, inputs))
        return self.conv(self.act(fused))


class BiFPNLayer(nn.Module):
    """One top-down + bottom-up BiFPN pass over ``num_levels`` levels of ``channels`` channels."""

    def __init__(
        self, num_levels: int, channels: int, norm_cfg: ConfigType, act_cfg: ConfigType, eps: float
    ) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f'a BiFPN layer needs at least 2 levels, got {num_levels}')
        self.num_levels = num_levels
        # top_down[i] makes level i from (input i, upsampled level i + 1), for i = L-2 .. 0
        self.top_down = nn.ModuleList(
            _FusionNode(2, channels, norm_cfg, act_cfg, eps) for _ in range(num_levels - 1)
        )
        # bottom_up[i - 1] makes output level i, i = 1 .. L-1: (input, top-down, downsampled
        # output i - 1) for the middle levels, (input, downsampled output i - 1) for the coarsest
        self.bottom_up = nn.ModuleList(
            _FusionNode(3 if level < num_levels - 1 else 2, channels, norm_cfg, act_cfg, eps)
            for level in range(1, num_levels)
        )

    def forward(self, features: Sequence[Tensor]) -> List[Tensor]:
        """features: L tensors (bs, C, H_l, W_l), finest first -> L tensors of the same shapes."""
        if len(features) != self.num_levels:
            raise ValueError(f'expected {self.num_levels} levels, got {len(features)}')
        top_down = [None] * self.num_levels
        top_down[-1] = features[-1]
        for level in range(self.num_levels - 2, -1, -1):
            coarser = _resize_to(top_down[level + 1], features[level].shape[-2:])
            top_down[level] = self.top_down[level]([features[level], coarser])

        outputs = [top_down[0]]
        for level in range(1, self.num_levels):
            finer = _resize_to(outputs[level - 1], features[level].shape[-2:])
            if level < self.num_levels - 1:
                inputs = [features[level], top_down[level], finer]
            else:
                inputs = [features[level], finer]
            outputs.append(self.bottom_up[level - 1](inputs))
        return outputs


class BiFPNNeck(BaseModule):
    """Stack of BiFPN layers on top of projected backbone levels.

    Args:
        in_channels: channels of the backbone outputs, finest first (e.g. [512, 1024, 2048]).
        out_channels: channels of every output level.
        num_outs: number of output levels (>= len(in_channels)); the extra coarse levels are made by
            stride-2 downsampling (see ``extra_downsample``).
        num_repeats: number of stacked BiFPN layers (EfficientDet-D0 uses 3).
        norm_cfg: norm after every conv. EfficientDet uses BN; at 2 images per GPU GroupNorm is the
            sensible choice, as in Deformable DETR's input projection.
        act_cfg: activation before every separable conv (EfficientDet: swish).
        extra_downsample: 'conv' (3x3 stride-2 conv + norm on the last raw input, then on the
            previous extra level: Deformable DETR's C6) or 'maxpool' (3x3 stride-2 max pool of the
            previous projected level: EfficientDet).
        eps: epsilon of the fast normalized fusion (EfficientDet: 1e-4).
        init_cfg: mmengine init config.
    """

    def __init__(
        self,
        in_channels: List[int],
        out_channels: int,
        num_outs: int,
        num_repeats: int = 3,
        norm_cfg: ConfigType = dict(type='BN', momentum=0.01, eps=1e-3),
        act_cfg: ConfigType = dict(type='Swish'),
        extra_downsample: str = 'conv',
        eps: float = 1e-4,
        init_cfg: OptMultiConfig = dict(type='Xavier', layer='Conv2d', distribution='uniform'),
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(in_channels, (list, tuple)) or len(in_channels) == 0:
            raise TypeError(f'in_channels must be a non-empty list, got {in_channels!r}')
        if num_outs < len(in_channels):
            raise ValueError(
                f'num_outs ({num_outs}) must be >= len(in_channels) ({len(in_channels)})'
            )
        if num_outs < 2:
            raise ValueError(f'BiFPN fuses at least 2 levels, got num_outs={num_outs}')
        if num_repeats < 1:
            raise ValueError(f'num_repeats must be >= 1, got {num_repeats}')
        if extra_downsample not in _EXTRA_DOWNSAMPLE:
            raise ValueError(
                f'extra_downsample must be one of {_EXTRA_DOWNSAMPLE}, got {extra_downsample!r}'
            )
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.extra_downsample = extra_downsample

        self.input_convs = nn.ModuleList(
            self._conv_norm(channels, out_channels, 1, 1, norm_cfg) for channels in in_channels
        )
        self.extra_convs = nn.ModuleList()
        if extra_downsample == 'conv':
            for index in range(num_outs - len(in_channels)):
                channels = in_channels[-1] if index == 0 else out_channels
                self.extra_convs.append(self._conv_norm(channels, out_channels, 3, 2, norm_cfg))
        self.layers = nn.ModuleList(
            BiFPNLayer(num_outs, out_channels, norm_cfg, act_cfg, eps) for _ in range(num_repeats)
        )

    @staticmethod
    def _conv_norm(
        in_channels: int, out_channels: int, kernel_size: int, stride: int, norm_cfg: ConfigType
    ) -> nn.Sequential:
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        )
        _, norm = build_norm_layer(norm_cfg, out_channels)
        return nn.Sequential(conv, norm)

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """Fuse backbone levels.

        Args:
            inputs: len(in_channels) tensors (bs, in_channels[l], H_l, W_l), finest first.

        Returns:
            tuple of num_outs tensors (bs, out_channels, H_l, W_l); the extra levels have
            H_l = ceil(H_{l-1} / 2), W_l = ceil(W_{l-1} / 2).
        """
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'expected {len(self.in_channels)} input levels, got {len(inputs)}')
        for level, (feature, channels) in enumerate(zip(inputs, self.in_channels)):
            if feature.dim() != 4 or feature.shape[1] != channels:
                raise ValueError(
                    f'input level {level} must be (bs, {channels}, H, W), '
                    f'got {tuple(feature.shape)}'
                )
        features = [conv(feature) for conv, feature in zip(self.input_convs, inputs)]
        for index in range(self.num_outs - len(self.in_channels)):
            if self.extra_downsample == 'conv':
                source = inputs[-1] if index == 0 else features[-1]
                features.append(self.extra_convs[index](source))
            else:
                features.append(F.max_pool2d(features[-1], kernel_size=3, stride=2, padding=1))
        for layer in self.layers:
            features = layer(features)
        return tuple(features)
