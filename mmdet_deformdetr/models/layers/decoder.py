"""Deformable DETR decoder: self-attention among queries, deformable cross-attention, FFN."""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .levelwise_attn import LevelwiseDeformAttn
from .msdeform_attn import MSDeformAttn
from .utils import LayerStack, ResidualFFN, apply_box_delta, scale_by_valid_ratios


class DeformableDecoderLayer(ResidualFFN):
    """Post-norm decoder layer, in the official order and with the official norm names:
    ``norm2(x + self_attn(x))``, ``norm1(x + cross_attn(x, memory))``, ``norm3(x + ffn(x))``.

    Args:
        embed_dims: channels C.
        num_heads: attention heads M (C % M == 0).
        num_levels: feature levels L.
        num_points: sampling points K per head and level.
        feedforward_channels: hidden width of the FFN.
        dropout: dropout in self-attention, after each sub-layer and inside the FFN.
        activation: FFN activation, ``'relu'`` or ``'gelu'``.
        multi_scale_attention: True: cross-attention normalises its weights over all ``L * K``
            points (the paper). False (Table 2 ablation): a ``LevelwiseDeformAttn`` that samples
            each level independently (softmax over K per level) and averages the levels.
    """

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int,
                 feedforward_channels: int, dropout: float, activation: str,
                 multi_scale_attention: bool = True) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout,
                                               batch_first=True)
        self.self_attn_dropout = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dims)
        attention_cls = MSDeformAttn if multi_scale_attention else LevelwiseDeformAttn
        self.cross_attn = attention_cls(embed_dims=embed_dims, num_heads=num_heads,
                                        num_levels=num_levels, num_points=num_points,
                                        dropout=dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self._build_ffn(embed_dims, feedforward_channels, dropout, activation)
        self.norm3 = nn.LayerNorm(embed_dims)

    def forward(self, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                memory: Tensor, memory_padding_mask: Optional[Tensor], spatial_shapes: Tensor,
                level_start_index: Tensor) -> Tensor:
        """Args:
            query: ``(bs, nq, C)`` content queries.
            query_pos: ``(bs, nq, C)`` positional queries.
            reference_points: ``(bs, nq, L, 2|4)`` references already scaled to each level.
            memory: ``(bs, N, C)`` encoder output.
            memory_padding_mask: ``(bs, N)`` bool, True at padding, or None.
            spatial_shapes: ``(L, 2)`` long ``(H_l, W_l)``.
            level_start_index: ``(L,)`` long.

        Returns:
            ``(bs, nq, C)``.
        """
        # positions go into queries and keys only; values stay content (as DETR)
        query_key = query + query_pos
        attended = self.self_attn(query_key, query_key, query, need_weights=False)[0]
        query = self.norm2(query + self.self_attn_dropout(attended))
        attended = self.cross_attn(query, reference_points, value=memory,
                                   spatial_shapes=spatial_shapes,
                                   level_start_index=level_start_index,
                                   value_padding_mask=memory_padding_mask, query_pos=query_pos)
        query = self.norm1(query + attended)
        return self.norm3(self.ffn_residual(query))


class DeformableDecoder(LayerStack):
    """``num_layers`` decoder layers, optionally refining the references after each layer.

    Arguments as :class:`LayerStack`, passed to every ``DeformableDecoderLayer``.
    """

    layer_cls = DeformableDecoderLayer

    def forward(self, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                memory: Tensor, memory_padding_mask: Optional[Tensor], spatial_shapes: Tensor,
                level_start_index: Tensor, valid_ratios: Tensor,
                reg_branches: Optional[Sequence[nn.Module]] = None) -> Tuple[Tensor, Tensor]:
        """Run all layers.

        Args:
            query: ``(bs, nq, C)`` content queries.
            query_pos: ``(bs, nq, C)`` positional queries.
            reference_points: ``(bs, nq, 2)`` points ``(cx, cy)`` or ``(bs, nq, 4)`` boxes
                ``(cx, cy, w, h)``, in [0, 1] of the valid image.
            memory: ``(bs, N, C)`` encoder output.
            memory_padding_mask: ``(bs, N)`` bool, True at padding, or None.
            spatial_shapes: ``(L, 2)`` long; level_start_index: ``(L,)`` long.
            valid_ratios: ``(bs, L, 2)`` ``(w, h)`` valid ratios.
            reg_branches: iterative refinement: at least ``num_layers`` modules mapping
                ``(bs, nq, C)`` to ``(bs, nq, 4)`` logit deltas; layer i refines with
                ``reg_branches[i]``. None: references stay fixed.

        Returns:
            hidden_states ``(num_layers, bs, nq, C)``, output of every layer;
            inter_references ``(num_layers, bs, nq, 2|4)`` the references after every layer:
            refined ones are detached and 4-d; without ``reg_branches`` the input references
            repeated, still attached (the official code: every layer's box loss then trains the
            reference-point predictor).
        """
        if reg_branches is not None and len(reg_branches) < len(self.layers):
            raise ValueError(f'{len(self.layers)} decoder layers need as many reg_branches, '
                             f'got {len(reg_branches)}')
        hidden_states, inter_references = [], []
        for index, layer in enumerate(self.layers):
            query = layer(query, query_pos, scale_by_valid_ratios(reference_points, valid_ratios),
                          memory, memory_padding_mask, spatial_shapes, level_start_index)
            if reg_branches is not None:
                reference_points = self._refine(reg_branches[index](query), reference_points)
            hidden_states.append(query)
            inter_references.append(reference_points)
        return torch.stack(hidden_states), torch.stack(inter_references)

    @staticmethod
    def _refine(delta: Tensor, reference_points: Tensor) -> Tensor:
        """New reference = sigmoid(delta + logit(reference)), detached: the next layer learns to
        correct this one's boxes, and gradients through the chain of references destabilise
        training (the paper, Sec. A.4).

        Args:
            delta: ``(bs, nq, 4)`` predicted logit offsets ``(cx, cy, w, h)``.
            reference_points: ``(bs, nq, 2|4)``; 2-d points only move the centre, the size
                comes from ``delta`` alone.

        Returns:
            ``(bs, nq, 4)`` detached boxes in [0, 1].
        """
        return apply_box_delta(delta, reference_points).detach()
