"""Reference multi-scale deformable attention built on ``F.grid_sample``.

Slow and memory hungry (it materialises one sampled tensor per level), but made only of standard
PyTorch ops, so it runs on every device, exports to ONNX and serves as the ground truth in tests.
"""

import torch.nn.functional as F
from torch import Tensor

from .shapes import SpatialShapes, level_shapes


def multi_scale_deformable_attn_reference(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention with bilinear ``grid_sample`` (zero padding).

    Args:
        value: ``(bs, num_keys, M, D)``, the flattened feature maps of all levels, one after
            another.
        spatial_shapes: ``(L, 2)`` long tensor or L ``(H, W)`` pairs, ``(H, W)`` of each level;
            ``sum(H * W) == num_keys``.
        sampling_locations: ``(bs, num_queries, M, L, K, 2)``, normalised ``(x, y)``; ``(0, 0)`` is
            the top-left corner of the map and ``(1, 1)`` the bottom-right one
            (align_corners=False).
        attention_weights: ``(bs, num_queries, M, L, K)``, weight of each sampled point.

    Returns:
        ``(bs, num_queries, M * D)``: for every head, the attention-weighted sum of the sampled
        values.
    """
    bs, _, num_heads, head_dims = value.shape
    num_queries, num_points = sampling_locations.shape[1], sampling_locations.shape[4]
    shapes = level_shapes(spatial_shapes)
    per_level_values = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample wants coordinates in [-1, 1]; with align_corners=False, -1 and 1 are the outer
    # edges of the border pixels, exactly the [0, 1] convention of the sampling locations.
    grids = sampling_locations * 2 - 1
    output = value.new_zeros(bs * num_heads, head_dims, num_queries)
    for level, (height, width) in enumerate(shapes):
        # (bs, H*W, M, D) -> (bs*M, D, H, W): one "image" per (sample, head) with D channels.
        level_value = (
            per_level_values[level]
            .permute(0, 2, 3, 1)
            .reshape(bs * num_heads, head_dims, height, width)
        )
        # (bs, nq, M, K, 2) -> (bs*M, nq, K, 2): a grid of nq x K points per (sample, head).
        level_grid = (
            grids[:, :, :, level]
            .transpose(1, 2)
            .reshape(bs * num_heads, num_queries, num_points, 2)
        )
        sampled = F.grid_sample(
            level_value, level_grid, mode='bilinear', padding_mode='zeros', align_corners=False
        )  # (bs*M, D, nq, K)
        level_weights = (
            attention_weights[:, :, :, level]
            .transpose(1, 2)
            .reshape(bs * num_heads, 1, num_queries, num_points)
        )
        # Summing level by level keeps only one level's samples alive at a time.
        output = output + (sampled * level_weights).sum(-1)
    # (bs*M, D, nq) -> (bs, nq, M*D), heads major, as the output projection expects.
    return output.view(bs, num_heads * head_dims, num_queries).transpose(1, 2).contiguous()
