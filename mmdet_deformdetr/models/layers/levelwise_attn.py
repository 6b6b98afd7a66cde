"""Deformable attention WITHOUT cross-level mixing (the ``multi_scale_attention=False`` ablation).

In multi-scale deformable attention (paper Eq. 3) the attention weights of one head are normalised
jointly over all ``L * K`` sampled points, so a query can trade information between levels. The
ablation in the paper's Table 2 removes that exchange. Decoder queries belong to no feature level,
so here each level is attended independently (softmax over the ``K`` points of that level only)
and the ``L`` per-level results are averaged:

    out = W_o * mean_l sum_k softmax_k(A_{l,k}) * W_v x_l(p + dp_{l,k})

The averaging is folded into the weights (``softmax / L``), so one call of the sampling operator
does all levels at once. Parameters have the same names and shapes as ``MSDeformAttn``, so the
state-dict layout does not change with the ablation.
"""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from ...ops import multi_scale_deformable_attn


class LevelwiseDeformAttn(nn.Module):
    """Deformable attention that samples every level independently and averages the levels.

    Args:
        embed_dims: channels C of queries and values; divisible by ``num_heads``.
        num_heads: number of attention heads M.
        num_levels: number of feature levels L.
        num_points: sampling points K per head and level.
        dropout: dropout on the projected output.
        im2col_step: chunk size handed to the sampling operator.
        impl: sampling implementation, see ``mmdet_deformdetr.ops.multi_scale_deformable_attn``.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, dropout: float = 0.1, im2col_step: int = 64,
                 impl: str = 'auto') -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by num_heads '
                             f'({num_heads})')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.im2col_step = im2col_step
        self.impl = impl
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    def init_weights(self) -> None:
        """Initial points on a ring per head (head m looks in direction 2*pi*m/M, point k at
        distance k+1), uniform attention, Xavier projections: the official initialisation."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float64) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        # scale so that the larger coordinate is 1: the first point sits one pixel away
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        distances = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        ring = directions[:, None, None, :] * distances[None, None, :, None]
        ring = ring.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor,
                value_padding_mask: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None) -> Tensor:
        """Attend every level independently and average.

        Args:
            query: ``(bs, nq, C)``.
            reference_points: ``(bs, nq, L, 2)`` normalised ``(x, y)`` or ``(bs, nq, L, 4)`` boxes
                ``(cx, cy, w, h)``; offsets of boxes are scaled by ``(w, h) / K * 0.5``.
            value: ``(bs, num_keys, C)`` with ``num_keys = sum_l H_l * W_l``.
            spatial_shapes: ``(L, 2)`` long ``(H_l, W_l)``.
            level_start_index: ``(L,)`` long offsets of each level in ``value``.
            value_padding_mask: ``(bs, num_keys)`` bool, True at padding, or None.
            query_pos: ``(bs, nq, C)`` added to ``query`` before offsets and weights, or None.

        Returns:
            ``(bs, nq, C)``, no residual (the layer adds it).
        """
        bs, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if spatial_shapes.shape[0] != levels:
            raise ValueError(f'{levels} levels configured but spatial_shapes has '
                             f'{spatial_shapes.shape[0]}')
        if query_pos is not None:
            query = query + query_pos
        value = self.value_proj(value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(bs, value.shape[1], heads, self.embed_dims // heads)

        offsets = self.sampling_offsets(query).view(bs, num_queries, heads, levels, points, 2)
        # softmax over the K points of each level separately, then average the L levels
        weights = self.attention_weights(query).view(bs, num_queries, heads, levels, points)
        weights = weights.softmax(-1) / levels

        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (W_l, H_l)
            normaliser = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(offsets)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / normaliser[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError('reference_points must end in 2 or 4, got shape '
                             f'{tuple(reference_points.shape)}')
        output = multi_scale_deformable_attn(value, spatial_shapes, level_start_index, locations,
                                             weights, im2col_step=self.im2col_step,
                                             impl=self.impl)
        return self.dropout(self.output_proj(output))
