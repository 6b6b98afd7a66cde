"""Deformable attention WITHOUT multi-scale attention: the paper's Table 2 ablation, in one place.

In multi-scale deformable attention (paper Eq. 3) the attention weights of one head are normalised
jointly over all ``L * K`` sampled points, so a query trades information between levels. The
ablation (``multi_scale_attention=False``) removes that exchange, with multi-scale *inputs* kept:

- an **encoder** query is a pixel of level ``l`` (``own_level=True``): it samples ``K`` points of
  level ``l`` only. The parameters are those of a one-level ``MSDeformAttn``; the flattened tokens
  are split by level and each slice attends to its own level's values.
- a **decoder** query belongs to no level (``own_level=False``): it samples every level
  independently, with a softmax over the ``K`` points of each level, and the ``L`` per-level results
  are averaged::

      out = W_o * mean_l sum_k softmax_k(A_{l,k}) * W_v x_l(p + dp_{l,k})

  The mean is folded into the weights (``softmax / L``), so one call of the sampling operator does
  every level at once; the parameters are those of an ``L``-level ``MSDeformAttn``.

Everything else (parameter names, initialisation, sampling locations, checks) is ``MSDeformAttn``'s,
so the state-dict layout is the one the official code would have with the same number of levels.
"""

from typing import Optional

import torch
from torch import Tensor

from ...ops import SpatialShapes, level_shapes
from ...ops.pointwise import softmax_last_dim
from .msdeform_attn import MSDeformAttn


class SingleScaleDeformAttn(MSDeformAttn):
    """Deformable attention whose queries do not mix levels.

    Args:
        embed_dims, num_heads, num_points, dropout, im2col_step, impl, init_cfg: as
            :class:`MSDeformAttn`.
        num_levels: feature levels L of the input.
        own_level: True for encoder self-attention (a query samples its own level only; built
            with one level of parameters), False for decoder cross-attention (every level
            separately, averaged).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
        own_level: bool = True,
        im2col_step: int = 64,
        impl: str = 'auto',
        init_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(
            embed_dims=embed_dims,
            num_heads=num_heads,
            num_levels=1 if own_level else num_levels,
            num_points=num_points,
            dropout=dropout,
            batch_first=True,
            im2col_step=im2col_step,
            impl=impl,
            init_cfg=init_cfg,
        )
        self.own_level = own_level

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
        """Arguments and result as :meth:`MSDeformAttn.forward` (batch first).

        With ``own_level``, ``query`` must be the flattened tokens of all levels (self-attention:
        ``value`` is ``query`` or None) and ``reference_points`` ``(bs, N, L, 2)``.
        """
        if not self.own_level:
            return super().forward(
                query,
                reference_points,
                value,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                value_padding_mask=value_padding_mask,
                query_pos=query_pos,
            )
        if value is not None and value is not query:
            raise ValueError(
                'own_level attention is self-attention over the flattened levels: '
                'value must be the query'
            )
        if level_start_index is None:
            raise ValueError('own_level attention needs level_start_index')
        single_level_start = level_start_index.new_zeros(1)
        outputs = []
        start = 0
        for level, (height, width) in enumerate(level_shapes(spatial_shapes)):
            # python offsets from the shapes (as level_start_index): symbolic under torch.export
            span = slice(start, start + height * width)
            start += height * width
            level_query = query[:, span]
            outputs.append(
                super().forward(
                    level_query,
                    reference_points[:, span, level : level + 1],
                    value=level_query,
                    spatial_shapes=spatial_shapes[level : level + 1],
                    level_start_index=single_level_start,
                    value_padding_mask=None
                    if value_padding_mask is None
                    else value_padding_mask[:, span],
                    query_pos=None if query_pos is None else query_pos[:, span],
                )
            )
        return torch.cat(outputs, 1)

    def _normalise_weights(self, logits: Tensor) -> Tensor:
        """Softmax over the K points of each level separately, divided by L (the level mean).

        Args:
            logits: ``(bs, nq, M, L, K)`` (``L = 1`` with ``own_level``).

        Returns:
            ``(bs, nq, M, L, K)`` weights; each level's K weights sum to ``1 / L``.
        """
        return softmax_last_dim(logits) / self.num_levels


def build_deform_attn(multi_scale_attention: bool, own_level: bool, **kwargs) -> MSDeformAttn:
    """The layers' deformable attention: ``MSDeformAttn`` (the paper) or, with
    ``multi_scale_attention=False``, the ablation (``own_level``: encoder True, decoder False).
    ``kwargs`` go to the constructor (``embed_dims``, ``num_heads``, ``num_levels``, ...)."""
    if multi_scale_attention:
        return MSDeformAttn(**kwargs)
    return SingleScaleDeformAttn(**kwargs, own_level=own_level)
