"""Two-stage Deformable DETR: every encoder token proposes a box; the best become the queries.

Functions of tensors and of the modules they need (handed in explicitly), called by
``DeformableDetrTransformer.pre_decoder``.
"""

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..ops import SpatialShapes, level_shapes

# official thresholds: proposals touching the border band (or padding) are unusable
_PROPOSAL_MIN = 0.01
_PROPOSAL_MAX = 0.99
# initial proposal size at level 0, doubled per level (the paper, Sec. A.4)
_BASE_PROPOSAL_SIZE = 0.05


def proposal_sine_embedding(
    proposals_unact: Tensor, num_feats: int, temperature: float = 10000.0
) -> Tensor:
    """Sine embedding of two-stage proposal boxes, ``num_feats`` features per coordinate.

    The official code fixes ``num_feats=128`` (embed_dims 256); taking it as an argument
    (``embed_dims // 2``) keeps ``4 * num_feats == 2 * embed_dims`` for any width, which is what
    ``pos_trans`` expects.

    Args:
        proposals_unact: ``(bs, nq, 4)`` proposal logits ``(cx, cy, w, h)`` (before sigmoid).
        num_feats: even number of features per coordinate.
        temperature: frequency base of the sine/cosine pairs.

    Returns:
        ``(bs, nq, 4 * num_feats)``; per coordinate, features alternate sin, cos.
    """
    if num_feats % 2:
        raise ValueError(f'num_feats must be even (sin/cos pairs), got {num_feats}')
    dim_t = torch.arange(num_feats, dtype=proposals_unact.dtype, device=proposals_unact.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode='floor') / num_feats)
    # (bs, nq, 4, num_feats)
    angles = proposals_unact.sigmoid()[..., None] * (2 * math.pi) / dim_t
    embedding = torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], -1)
    return embedding.flatten(2)


def encoder_proposals(
    memory: Tensor,
    padding_mask: Tensor,
    spatial_shapes: SpatialShapes,
    enc_output: nn.Module,
    enc_output_norm: nn.Module,
) -> Tuple[Tensor, Tensor]:
    """One fixed-size box per encoder token, and the token features that will score it.

    Args:
        memory: ``(bs, N, C)`` encoder output, ``N = sum_l H_l * W_l``.
        padding_mask: ``(bs, N)`` bool, True at padding.
        spatial_shapes: ``(L, 2)`` long tensor or L ``(H_l, W_l)`` pairs.
        enc_output: ``Linear(C, C)`` applied to the memory.
        enc_output_norm: ``LayerNorm(C)`` after it.

    Returns:
        output_memory ``(bs, N, C)``: transformed memory, zero before the transform at invalid
        tokens; proposals_unact ``(bs, N, 4)``: logits of ``(cx, cy, w, h)`` boxes centred on
        each token with side ``0.05 * 2**level``, ``+inf`` at invalid tokens (padded, or any
        coordinate outside (0.01, 0.99)), so that their regressed boxes saturate to 1.
    """
    batch_size = memory.shape[0]
    # proposal geometry in at least float32, whatever the autocast dtype of the memory
    precise = torch.promote_types(memory.dtype, torch.float32)
    proposals = []
    start = 0
    for level, (height, width) in enumerate(level_shapes(spatial_shapes)):
        level_mask = padding_mask[:, start : start + height * width].view(batch_size, height, width)
        start += height * width
        # (bs, 1, 1, 2) valid extent (W, H): centres are normalised to the image, not the padding
        valid_size = (
            torch.stack([(~level_mask[:, 0, :]).sum(1), (~level_mask[:, :, 0]).sum(1)], -1)
            .to(precise)
            .view(batch_size, 1, 1, 2)
        )
        centre_y, centre_x = torch.meshgrid(
            torch.arange(height, dtype=precise, device=memory.device),
            torch.arange(width, dtype=precise, device=memory.device),
            indexing='ij',
        )
        centres = (torch.stack([centre_x, centre_y], -1)[None] + 0.5) / valid_size
        sizes = torch.full_like(centres, _BASE_PROPOSAL_SIZE * 2.0**level)
        proposals.append(torch.cat([centres, sizes], -1).view(batch_size, -1, 4))
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > _PROPOSAL_MIN) & (proposals < _PROPOSAL_MAX)).all(-1, keepdim=True)
    valid = valid & ~padding_mask[..., None]
    # plain logit (no clamping): valid proposals are inside (0.01, 0.99); invalid ones are
    # replaced by +inf below (padded centres exceed 1 and give NaN here, also replaced)
    proposals_unact = torch.log(proposals / (1 - proposals)).masked_fill(~valid, float('inf'))
    output_memory = enc_output_norm(enc_output(memory.masked_fill(~valid, 0.0)))
    return output_memory, proposals_unact


def proposal_queries(
    enc_outputs_class: Tensor,
    enc_coords_unact: Tensor,
    num_queries: int,
    pos_trans: nn.Module,
    pos_trans_norm: nn.Module,
    padding_mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Keep the ``num_queries`` proposals with the highest objectness as decoder queries.

    Args:
        enc_outputs_class: ``(bs, N, num_classes)`` proposal logits; channel 0 is the
            objectness (the encoder loss labels every target 0).
        enc_coords_unact: ``(bs, N, 4)`` regressed proposal logits ``(cx, cy, w, h)``.
        num_queries: proposals kept, at most N.
        pos_trans: ``Linear(2C, 2C)`` on the proposals' sine embedding.
        pos_trans_norm: ``LayerNorm(2C)`` after it.
        padding_mask: ``(bs, N)`` bool, True at padding: those tokens are never kept. None keeps
            the official selection, where a padded token is an invalid proposal whose constant
            objectness can outrank the image's own (so that a padded batch spends queries on
            boxes at the padding corner that the image alone would not have).

    Returns:
        query ``(bs, nq, C)`` content, query_pos ``(bs, nq, C)`` positional (both from the
        boxes' embedding), reference_points ``(bs, nq, 4)`` detached boxes in [0, 1].
    """
    num_tokens = enc_outputs_class.shape[1]
    if num_queries > num_tokens:
        raise ValueError(
            f'two-stage keeps num_queries={num_queries} proposals but the feature '
            f'maps hold only {num_tokens} tokens; use larger images or fewer queries'
        )
    objectness = enc_outputs_class[..., 0]
    if padding_mask is not None:
        objectness = objectness.masked_fill(padding_mask, float('-inf'))
    topk_index = objectness.topk(num_queries, dim=1)[1]
    # detached: the decoder refines the proposals, it does not train the proposal regressor
    topk_coords_unact = enc_coords_unact.gather(1, topk_index[..., None].expand(-1, -1, 4)).detach()
    embed_dims = pos_trans.in_features // 2
    embedding = proposal_sine_embedding(topk_coords_unact, num_feats=embed_dims // 2)
    query_pos, query = pos_trans_norm(pos_trans(embedding)).split(embed_dims, dim=-1)
    return query, query_pos, topk_coords_unact.sigmoid()
