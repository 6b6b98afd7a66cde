"""Deformable DETR encoder: a stack of (deformable self-attention, FFN) layers over all levels."""

import copy
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ...ops import SpatialShapes
from ...ops.linear import linear
from ..geometry import encoder_reference_points
from .activation import build_activation, ffn_hidden
from .single_scale_attn import build_deform_attn


class DeformableEncoderLayer(nn.Module):
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
            ablation): a query samples only its own level (``SingleScaleDeformAttn``).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_channels: int = 1024,
        dropout: float = 0.1,
        activation: str = 'relu',
        multi_scale_attention: bool = True,
    ) -> None:
        super().__init__()
        self.self_attn = build_deform_attn(
            multi_scale_attention,
            own_level=True,
            embed_dims=embed_dims,
            num_heads=num_heads,
            num_levels=num_levels,
            num_points=num_points,
            dropout=dropout,
        )
        self.norm1 = nn.LayerNorm(embed_dims)
        # FFN, official names
        self.linear1 = nn.Linear(embed_dims, feedforward_channels)
        self.activation = build_activation(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward_channels, embed_dims)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dims)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Tensor,
        padding_mask: Optional[Tensor],
    ) -> Tensor:
        """Args:
            query: ``(bs, N, C)`` flattened features of all levels, ``N = sum_l H_l * W_l``.
            query_pos: ``(bs, N, C)`` positional + level embedding.
            reference_points: ``(bs, N, L, 2)`` normalised ``(x, y)`` of each query seen from
                every level (see ``geometry.encoder_reference_points``).
            spatial_shapes: ``(H_l, W_l)`` per level (``ops.SpatialShapes``).
            level_start_index: ``(L,)`` long.
            padding_mask: ``(bs, N)`` bool, True at padding, or None.

        Returns:
            ``(bs, N, C)``.
        """
        attended = self.self_attn(
            query,
            reference_points,
            value=query,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            value_padding_mask=padding_mask,
            query_pos=query_pos,
        )
        query = self.norm1(query + attended)  # the attention applies its own output dropout
        return self.forward_ffn(query)

    def forward_ffn(self, query: Tensor) -> Tensor:
        """``norm2(x + dropout(linear2(dropout(act(linear1(x))))))``; ``(bs, N, C)`` in and out."""
        hidden = self.dropout2(ffn_hidden(query, self.linear1, self.activation))
        return self.norm2(query + self.dropout3(linear(hidden, self.linear2)))


class DeformableEncoder(nn.Module):
    """``num_layers`` copies of ``layer`` (as the official ``_get_clones``), sharing one set of
    reference points.

    Args:
        layer: the first layer; the others are deep copies of it (initialised by the transformer).
        num_layers: number of layers.
        with_cp: activation checkpointing: in training, each layer keeps only its inputs for the
            backward pass and runs its forward again there (``torch.utils.checkpoint``,
            non-reentrant, RNG state preserved so dropout draws the same masks): less memory for
            one more forward of the layer. Gradients are those without it.
    """

    def __init__(
        self, layer: DeformableEncoderLayer, num_layers: int, with_cp: bool = False
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.with_cp = with_cp

    def forward(
        self,
        feat: Tensor,
        feat_pos: Tensor,
        padding_mask: Optional[Tensor],
        spatial_shapes: SpatialShapes,
        level_start_index: Tensor,
        valid_ratios: Tensor,
    ) -> Tensor:
        """Args:
            feat: ``(bs, N, C)`` flattened features of all levels.
            feat_pos: ``(bs, N, C)`` positional + level embeddings.
            padding_mask: ``(bs, N)`` bool, True at padding, or None.
            spatial_shapes: ``(H_l, W_l)`` per level (``ops.SpatialShapes``).
            level_start_index: ``(L,)`` long.
            valid_ratios: ``(bs, L, 2)`` ``(w, h)`` valid ratio of each level.

        Returns:
            memory ``(bs, N, C)``.
        """
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        recompute = self.with_cp and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            args = (
                feat,
                feat_pos,
                reference_points,
                spatial_shapes,
                level_start_index,
                padding_mask,
            )
            feat = checkpoint(layer, *args, use_reentrant=False) if recompute else layer(*args)
        return feat
