"""Deformable DETR decoder: self-attention among queries, deformable cross-attention, FFN."""

import copy
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ...ops import SpatialShapes
from ...ops.linear import linear
from ..geometry import apply_box_delta, scale_by_valid_ratios
from .activation import build_activation, ffn_hidden
from .single_scale_attn import build_deform_attn


class DeformableDecoderLayer(nn.Module):
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
            points (the paper). False (Table 2 ablation): every level is sampled independently
            and the levels are averaged (``SingleScaleDeformAttn``).
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
        self.self_attn = nn.MultiheadAttention(
            embed_dims, num_heads, dropout=dropout, batch_first=True
        )
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.cross_attn = build_deform_attn(
            multi_scale_attention,
            own_level=False,
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
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward_channels, embed_dims)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(embed_dims)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        memory_padding_mask: Optional[Tensor],
        spatial_shapes: SpatialShapes,
        level_start_index: Tensor,
    ) -> Tensor:
        """Args:
            query: ``(bs, nq, C)`` content queries.
            query_pos: ``(bs, nq, C)`` positional queries.
            reference_points: ``(bs, nq, L, 2|4)`` references already scaled to each level.
            memory: ``(bs, N, C)`` encoder output.
            memory_padding_mask: ``(bs, N)`` bool, True at padding, or None.
            spatial_shapes: ``(H_l, W_l)`` per level (``ops.SpatialShapes``).
            level_start_index: ``(L,)`` long.

        Returns:
            ``(bs, nq, C)``.
        """
        # self-attention: positions go into queries and keys only, values stay content (DETR)
        query_key = query + query_pos
        if query.device.type == 'cpu' and torch.is_autocast_enabled('cpu'):
            # float32 here: under CPU bf16 autocast nn.MultiheadAttention is several times slower
            # than in float32 at these small shapes (docs/performance.md)
            with torch.autocast('cpu', enabled=False):
                query_key = query_key.float()
                attended, _ = self.self_attn(
                    query_key, query_key, query.float(), need_weights=False
                )
        else:
            attended, _ = self.self_attn(query_key, query_key, query, need_weights=False)
        query = self.norm2(query + self.dropout2(attended))
        # cross-attention into the encoder memory (the attention applies its output dropout)
        attended = self.cross_attn(
            query,
            reference_points,
            value=memory,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            value_padding_mask=memory_padding_mask,
            query_pos=query_pos,
        )
        query = self.norm1(query + attended)
        return self.forward_ffn(query)

    def forward_ffn(self, query: Tensor) -> Tensor:
        """``norm3(x + dropout(linear2(dropout(act(linear1(x))))))``; ``(bs, nq, C)``."""
        hidden = self.dropout3(ffn_hidden(query, self.linear1, self.activation))
        return self.norm3(query + self.dropout4(linear(hidden, self.linear2)))


class DeformableDecoder(nn.Module):
    """``num_layers`` copies of ``layer`` (as the official ``_get_clones``), optionally refining
    the references after each layer.

    Args:
        layer: the first layer; the others are deep copies of it (initialised by the transformer).
        num_layers: number of layers.
        with_cp: activation checkpointing of each layer in training (see ``DeformableEncoder``);
            the refinement by ``reg_branches`` stays outside the checkpointed part.
    """

    def __init__(
        self, layer: DeformableDecoderLayer, num_layers: int, with_cp: bool = False
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.with_cp = with_cp

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        memory_padding_mask: Optional[Tensor],
        spatial_shapes: SpatialShapes,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        reg_branches: Optional[Sequence[nn.Module]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Run all layers.

        Args:
            query: ``(bs, nq, C)`` content queries.
            query_pos: ``(bs, nq, C)`` positional queries.
            reference_points: ``(bs, nq, 2)`` points ``(cx, cy)`` or ``(bs, nq, 4)`` boxes
                ``(cx, cy, w, h)``, in [0, 1] of the valid image.
            memory: ``(bs, N, C)`` encoder output.
            memory_padding_mask: ``(bs, N)`` bool, True at padding, or None.
            spatial_shapes: ``(H_l, W_l)`` per level; level_start_index: ``(L,)`` long.
            valid_ratios: ``(bs, L, 2)`` ``(w, h)`` valid ratios.
            reg_branches: iterative refinement: layer i refines with ``reg_branches[i]``
                (modules mapping ``(bs, nq, C)`` to ``(bs, nq, 4)`` logit deltas; the transformer
                checks there are enough). None: references stay fixed.

        Returns:
            hidden_states ``(num_layers, bs, nq, C)``, output of every layer;
            inter_references ``(num_layers, bs, nq, 2|4)`` the references after every layer:
            refined ones are detached and 4-d; without ``reg_branches`` the input references
            repeated, still attached (the official code: every layer's box loss then trains the
            reference-point predictor).
        """
        hidden_states, inter_references = [], []
        recompute = self.with_cp and self.training and torch.is_grad_enabled()
        for index, layer in enumerate(self.layers):
            args = (
                query,
                query_pos,
                scale_by_valid_ratios(reference_points, valid_ratios),
                memory,
                memory_padding_mask,
                spatial_shapes,
                level_start_index,
            )
            query = checkpoint(layer, *args, use_reentrant=False) if recompute else layer(*args)
            if reg_branches is not None:
                # detached: the next layer learns to correct this one's boxes; gradients through
                # the chain of references destabilise training (the paper, Sec. A.4)
                reference_points = apply_box_delta(
                    reg_branches[index](query), reference_points
                ).detach()
            hidden_states.append(query)
            inter_references.append(reference_points)
        return torch.stack(hidden_states), torch.stack(inter_references)
