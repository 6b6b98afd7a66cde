"""MSDeformAttn: the multi-scale deformable attention module (Zhu et al., ICLR 2021, Eq. 3).

Every query attends to a handful of points per head and level instead of all keys::

    query (+ query_pos) --sampling_offsets--> offsets (bs, nq, M, L, K, 2) --+
                        --attention_weights--> softmax over L*K --------------+--> sample value
    value --value_proj--> zero at padding --> (bs, num_keys, M, D) -----------+    at reference
                                                                                   + offset
    --> (bs, nq, M*D) --output_proj--> dropout --> (bs, nq, C)   (no residual: the layer adds it)

Parameter names (``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``) and
their initialisation follow the official implementation so its checkpoints load unchanged.
"""

import math
from typing import Optional

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from ...ops import IMPLS, SpatialShapes, multi_scale_deformable_attn, shapes_tensor
from ...ops.linear import linear
from ...ops.pointwise import box_locations, padding_is_empty, point_locations, softmax_last_dim


class MSDeformAttn(BaseModule):
    """Multi-scale deformable attention.

    Args:
        embed_dims: channels C of query and value; divisible by ``num_heads``.
        num_heads: attention heads M.
        num_levels: feature levels L (>= 1).
        num_points: sampling points K per head and level (>= 1).
        dropout: dropout on the output.
        batch_first: inputs are ``(bs, n, C)`` if True, ``(n, bs, C)`` if False.
        im2col_step: batch chunk of mmcv's CUDA kernel.
        impl: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'pytorch'``, see
            :func:`mmdet_deformdetr.ops.multi_scale_deformable_attn`.
        init_cfg: mmengine init config; None means the official initialisation.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
        batch_first: bool = True,
        im2col_step: int = 64,
        impl: str = 'auto',
        init_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_heads < 1 or embed_dims % num_heads != 0:
            raise ValueError(
                f'embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})'
            )
        if num_levels < 1 or num_points < 1:
            raise ValueError(
                f'num_levels ({num_levels}) and num_points ({num_points}) must be >= 1'
            )
        if impl not in IMPLS:
            raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
        if im2col_step < 1:
            raise ValueError(f'im2col_step must be >= 1, got {im2col_step}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.batch_first = batch_first
        self.im2col_step = im2col_step
        self.impl = impl
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        # Initialised at construction, as the official module, so a bare MSDeformAttn is usable;
        # init_weights() (called by mmengine runners) applies the same again.
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """The official initialisation.

        Offsets start as a fixed pattern (weight 0): head m looks in direction 2*pi*m/M, its k-th
        point (k = 0..K-1) at distance k + 1 in the "max-norm" sense (the unit direction is scaled
        so that max(|x|, |y|) = 1), the same pattern on every level. Attention starts uniform
        (zero logits). Projections are Xavier-uniform with zero bias.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        # float32 arithmetic in the official order, so the bias equals the official one bit for bit
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (M, 2) as (x, y)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        distances = torch.arange(1, self.num_points + 1, dtype=torch.float32)  # (K,)
        offsets = directions[:, None, None, :] * distances[None, None, :, None]  # (M, 1, K, 2)
        offsets = offsets.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def init_weights(self) -> None:
        """Official initialisation, or mmengine's ``init_cfg`` when one was given."""
        if self.init_cfg is None:
            self._reset_parameters()
            self._is_init = True
        else:
            super().init_weights()

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Optional[Tensor],
        spatial_shapes: SpatialShapes,
        level_start_index: Optional[Tensor] = None,
        value_padding_mask: Optional[Tensor] = None,
        query_pos: Optional[Tensor] = None,
    ) -> Tensor:
        """Args:
            query: ``(bs, nq, C)`` (``(nq, bs, C)`` if not batch_first).
            reference_points: ``(bs, nq, L, 2)`` normalised ``(x, y)`` points, or
                ``(bs, nq, L, 4)`` normalised ``(cx, cy, w, h)`` boxes (offsets are then scaled by
                ``(w, h) / K * 0.5``, so the initial pattern stays inside the box).
            value: ``(bs, num_keys, C)`` (``(num_keys, bs, C)`` if not batch_first), or None for
                ``query`` (self-attention, without ``query_pos``).
            spatial_shapes: ``(L, 2)`` integer tensor or L Python ``(H, W)`` pairs (symbolic
                under ``torch.export``, see ``ops/shapes.py``), ``(H, W)`` per level;
                ``sum(H * W) == num_keys``. The first five arguments are required, in the
                official module's order.
            level_start_index: ``(L,)`` integer, first key of each level; derived from
                ``spatial_shapes`` when None.
            value_padding_mask: ``(bs, num_keys)`` bool, True at padding (those values read 0).
            query_pos: like ``query``, added to it before predicting offsets and weights.

        Returns:
            ``(bs, nq, C)`` (``(nq, bs, C)`` if not batch_first): ``dropout(output_proj(...))``,
            without residual.
        """
        if value is None:
            value = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = query.transpose(0, 1), value.transpose(0, 1)
        bs, num_queries, _ = query.shape
        num_keys = value.shape[1]
        self._check_shapes(query, value, reference_points, spatial_shapes, value_padding_mask)
        shapes = shapes_tensor(spatial_shapes, query.device)
        if level_start_index is None:
            sizes = shapes[:, 0] * shapes[:, 1]
            level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])

        value = linear(value, self.value_proj)
        if value_padding_mask is not None and not padding_is_empty(value_padding_mask):
            value = value.masked_fill(value_padding_mask[..., None].to(torch.bool), 0.0)
        value = value.view(bs, num_keys, self.num_heads, self.embed_dims // self.num_heads)

        # Locations and softmax in at least float32: under bf16 autocast the Linear outputs are
        # bf16, whose 8-bit mantissa would misplace points by up to half a pixel on a 152-wide map.
        precise = torch.promote_types(query.dtype, torch.float32)
        offsets = (
            linear(query, self.sampling_offsets)
            .to(precise)
            .view(bs, num_queries, self.num_heads, self.num_levels, self.num_points, 2)
        )
        weights = self._normalise_weights(
            linear(query, self.attention_weights)
            .to(precise)
            .view(bs, num_queries, self.num_heads, self.num_levels, self.num_points)
        )
        reference_points = reference_points.to(precise)
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: normalise by (W, H).
            locations = point_locations(reference_points, offsets, shapes.flip(-1).to(precise))
        else:
            locations = box_locations(reference_points, offsets)

        output = multi_scale_deformable_attn(
            value,
            spatial_shapes,
            level_start_index,
            locations,
            weights,
            im2col_step=self.im2col_step,
            impl=self.impl,
        )
        output = self.dropout(linear(output, self.output_proj))
        return output if self.batch_first else output.transpose(0, 1)

    def _normalise_weights(self, logits: Tensor) -> Tensor:
        """Attention weights from logits: one softmax per head over all ``L * K`` points (Eq. 3),
        so a query trades information between levels.

        Args:
            logits: ``(bs, nq, M, L, K)``.

        Returns:
            ``(bs, nq, M, L, K)`` weights summing to 1 per query and head.
        """
        return softmax_last_dim(logits.flatten(-2)).view_as(logits)

    def _check_shapes(
        self,
        query: Tensor,
        value: Tensor,
        reference_points: Tensor,
        spatial_shapes: SpatialShapes,
        value_padding_mask: Optional[Tensor],
    ) -> None:
        """Raise ValueError with the offending shapes (query and value already batch-first)."""
        bs, num_queries, channels = query.shape
        if (
            channels != self.embed_dims
            or value.dim() != 3
            or value.shape[0] != bs
            or value.shape[2] != self.embed_dims
        ):
            raise ValueError(
                f'query {tuple(query.shape)} and value {tuple(value.shape)} must be '
                f'(bs, n, {self.embed_dims}) with the same bs (after batch_first)'
            )
        given = (
            tuple(spatial_shapes.shape)
            if isinstance(spatial_shapes, Tensor)
            else (len(spatial_shapes), 2)
        )
        if given != (self.num_levels, 2):
            raise ValueError(f'spatial_shapes must be ({self.num_levels}, 2), got {given}')
        if reference_points.dim() != 4 or reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                'reference_points must be (bs, nq, L, 2) points or (bs, nq, L, 4) '
                f'boxes; last dim must be 2 or 4, got {tuple(reference_points.shape)}'
            )
        if tuple(reference_points.shape[:3]) != (bs, num_queries, self.num_levels):
            raise ValueError(
                f'reference_points must be ({bs}, {num_queries}, {self.num_levels}, '
                f'2|4), got {tuple(reference_points.shape)}'
            )
        if value_padding_mask is not None and tuple(value_padding_mask.shape) != tuple(
            value.shape[:2]
        ):
            raise ValueError(
                f'value_padding_mask must be {tuple(value.shape[:2])}, got '
                f'{tuple(value_padding_mask.shape)}'
            )
        # num_keys == sum(H * W) is checked by multi_scale_deformable_attn (one host sync, once).
