"""Deformable DETR encoder: a stack of (deformable self-attention, FFN) layers over all levels."""
from typing import Optional

import torch
from torch import Tensor, nn

from .msdeform_attn import MSDeformAttn
from .utils import LayerStack, ResidualFFN, encoder_reference_points


class DeformableEncoderLayer(ResidualFFN):
    """Post-norm encoder layer: ``norm1(x + attn(x))`` then ``norm2(x + ffn(x))``.

    Args:
        embed_dims: channels C.
        num_heads: attention heads M (C % M == 0).
        num_levels: feature levels L.
        num_points: sampling points K per head and level.
        feedforward_channels: hidden width of the FFN.
        dropout: dropout after attention, inside and after the FFN.
        activation: FFN activation, ``'relu'`` or ``'gelu'``.
        multi_scale_attention: True (the paper): a query samples all levels. False (Table 2
            ablation): a query samples only its own level, through an attention built with
            ``num_levels=1`` that is run once per level on that level's slice.
    """

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int,
                 feedforward_channels: int, dropout: float, activation: str,
                 multi_scale_attention: bool = True) -> None:
        super().__init__()
        self.multi_scale_attention = multi_scale_attention
        self.self_attn = MSDeformAttn(
            embed_dims=embed_dims, num_heads=num_heads,
            num_levels=num_levels if multi_scale_attention else 1,
            num_points=num_points, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(embed_dims)
        self._build_ffn(embed_dims, feedforward_channels, dropout, activation)
        self.norm2 = nn.LayerNorm(embed_dims)

    def forward(self, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor,
                padding_mask: Optional[Tensor]) -> Tensor:
        """Args:
            query: ``(bs, N, C)`` flattened features of all levels, ``N = sum_l H_l * W_l``.
            query_pos: ``(bs, N, C)`` positional + level embedding.
            reference_points: ``(bs, N, L, 2)`` normalised ``(x, y)`` of each query seen from
                every level (see ``encoder_reference_points``).
            spatial_shapes: ``(L, 2)`` long ``(H_l, W_l)``.
            level_start_index: ``(L,)`` long.
            padding_mask: ``(bs, N)`` bool, True at padding, or None.

        Returns:
            ``(bs, N, C)``.
        """
        if self.multi_scale_attention:
            attended = self.self_attn(query, reference_points, value=query,
                                      spatial_shapes=spatial_shapes,
                                      level_start_index=level_start_index,
                                      value_padding_mask=padding_mask, query_pos=query_pos)
        else:
            attended = self._attend_own_level(query, query_pos, reference_points,
                                              spatial_shapes, level_start_index, padding_mask)
        query = self.norm1(query + attended)
        return self.norm2(self.ffn_residual(query))

    def _attend_own_level(self, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                          spatial_shapes: Tensor, level_start_index: Tensor,
                          padding_mask: Optional[Tensor]) -> Tensor:
        """Single-level attention per level: queries of level l see only level l's values.

        Shapes as in ``forward``; returns ``(bs, N, C)``.
        """
        single_level_start = level_start_index.new_zeros(1)
        outputs = []
        starts = level_start_index.tolist()
        for level, (height, width) in enumerate(spatial_shapes.tolist()):
            span = slice(starts[level], starts[level] + height * width)
            level_query = query[:, span]
            outputs.append(self.self_attn(
                level_query, reference_points[:, span, level:level + 1], value=level_query,
                spatial_shapes=spatial_shapes[level:level + 1],
                level_start_index=single_level_start,
                value_padding_mask=None if padding_mask is None else padding_mask[:, span],
                query_pos=query_pos[:, span]))
        return torch.cat(outputs, 1)


class DeformableEncoder(LayerStack):
    """``num_layers`` encoder layers sharing one set of reference points.

    Arguments as :class:`LayerStack`, passed to every ``DeformableEncoderLayer``.
    """

    layer_cls = DeformableEncoderLayer

    def forward(self, feat: Tensor, feat_pos: Tensor, padding_mask: Optional[Tensor],
                spatial_shapes: Tensor, level_start_index: Tensor,
                valid_ratios: Tensor) -> Tensor:
        """Args:
            feat: ``(bs, N, C)`` flattened features of all levels.
            feat_pos: ``(bs, N, C)`` positional + level embeddings.
            padding_mask: ``(bs, N)`` bool, True at padding, or None.
            spatial_shapes: ``(L, 2)`` long ``(H_l, W_l)``.
            level_start_index: ``(L,)`` long.
            valid_ratios: ``(bs, L, 2)`` ``(w, h)`` valid ratio of each level.

        Returns:
            memory ``(bs, N, C)``.
        """
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            feat = layer(feat, feat_pos, reference_points, spatial_shapes, level_start_index,
                         padding_mask)
        return feat
