"""Small numeric helpers shared by the transformer, the decoder and the head.

The functions are pure functions of their tensor arguments, so each can be tested on its own;
the modules (``RegressionMLP``, ``ResidualFFN``, ``LayerStack``) are the small building blocks
shared by the head and by the encoder and decoder. Coordinates are normalised to [0, 1] and ordered
``(x, y)`` / ``(cx, cy, w, h)`` unless stated otherwise.
"""
import math
from typing import ClassVar, List, Type

import torch
from torch import Tensor, nn


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of ``x``, clamped so that 0 and 1 map to finite values.

    Args:
        x: any shape, values in [0, 1].
        eps: smallest value allowed for ``x`` and ``1 - x`` (1e-5 as the official code), so that
            a box touching the image border does not produce an infinite logit.

    Returns:
        Tensor of the same shape as ``x``.
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def apply_box_delta(delta: Tensor, reference: Tensor) -> Tensor:
    """Boxes predicted relative to a reference: ``sigmoid(delta + logit(reference))``.

    Used by the head (every layer's boxes) and by the decoder (iterative refinement), as in the
    official code.

    Args:
        delta: ``(..., 4)`` predicted logit offsets ``(cx, cy, w, h)``.
        reference: ``(..., 4)`` boxes or ``(..., 2)`` points ``(cx, cy)`` in [0, 1]; a point
            locates the centre only, and the size is then ``sigmoid(delta[..., 2:])``.

    Returns:
        ``(..., 4)`` boxes ``(cx, cy, w, h)`` in [0, 1], in the promoted dtype of the inputs.
    """
    reference_logit = inverse_sigmoid(reference)
    if reference.shape[-1] == 4:
        return (delta + reference_logit).sigmoid()
    return torch.cat([delta[..., :2] + reference_logit, delta[..., 2:]], -1).sigmoid()


def valid_ratios_from_mask(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Fraction of each padded feature map that holds the image.

    Padding is always at the bottom and the right (mmdet pads that way), so the valid height is
    the number of unpadded rows in the first column and the valid width the number of unpadded
    columns in the first row.

    Args:
        mask: ``(bs, H, W)`` bool, True at padding.
        dtype: floating dtype of the result (that of the features).

    Returns:
        ``(bs, 2)`` ratios ``(valid_W / W, valid_H / H)``.
    """
    _, height, width = mask.shape
    valid_height = (~mask[:, :, 0]).sum(1).to(dtype) / height
    valid_width = (~mask[:, 0, :]).sum(1).to(dtype) / width
    return torch.stack([valid_width, valid_height], -1)


def encoder_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor) -> Tensor:
    """Reference point of every encoder query, as seen from every feature level.

    A query is the centre of its pixel; the centre is normalised by the *valid* size of its level
    (so that 1.0 is the image border, not the padding border), then multiplied by each level's
    valid ratio to express it in that level's padded coordinates, which is what the sampling
    operator expects.

    Args:
        spatial_shapes: ``(L, 2)`` long, ``(H_l, W_l)`` of each level.
        valid_ratios: ``(bs, L, 2)`` floating, ``(w, h)`` valid ratios of each level.

    Returns:
        ``(bs, sum_l H_l * W_l, L, 2)`` normalised ``(x, y)``, dtype of ``valid_ratios``.
    """
    dtype, device = valid_ratios.dtype, valid_ratios.device
    per_level: List[Tensor] = []
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        centre_y, centre_x = torch.meshgrid(
            torch.arange(height, dtype=dtype, device=device) + 0.5,
            torch.arange(width, dtype=dtype, device=device) + 0.5,
            indexing='ij')
        # (bs, H*W): divide by the valid extent of this level
        ref_x = centre_x.reshape(1, -1) / (valid_ratios[:, level, 0:1] * width)
        ref_y = centre_y.reshape(1, -1) / (valid_ratios[:, level, 1:2] * height)
        per_level.append(torch.stack([ref_x, ref_y], -1))
    reference_points = torch.cat(per_level, 1)
    return reference_points[:, :, None] * valid_ratios[:, None]


def scale_by_valid_ratios(reference_points: Tensor, valid_ratios: Tensor) -> Tensor:
    """Express decoder references in each level's padded coordinates.

    Args:
        reference_points: ``(bs, nq, 2)`` points ``(cx, cy)`` or ``(bs, nq, 4)`` boxes
            ``(cx, cy, w, h)``, normalised to the valid image.
        valid_ratios: ``(bs, L, 2)`` ``(w, h)`` valid ratios.

    Returns:
        ``(bs, nq, L, 2|4)``; for boxes the width and height are scaled too.
    """
    if reference_points.shape[-1] == 4:
        valid_ratios = torch.cat([valid_ratios, valid_ratios], -1)
    elif reference_points.shape[-1] != 2:
        raise ValueError('reference_points must end in 2 (points) or 4 (boxes), got shape '
                         f'{tuple(reference_points.shape)}')
    return reference_points[:, :, None] * valid_ratios[:, None]


def proposal_sine_embedding(proposals_unact: Tensor, num_feats: int,
                            temperature: float = 10000.) -> Tensor:
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


class RegressionMLP(nn.Module):
    """Box regression branch: ``num_layers`` linear layers with ReLU between them.

    Parameters are named ``layers.{i}`` as in the official ``bbox_embed`` (documented state-dict
    keys ``bbox_head.reg_branches.{j}.layers.{0,1,2}``).

    Args:
        in_dims: input width.
        hidden_dims: width of the hidden layers.
        out_dims: output width (4 for boxes).
        num_layers: number of linear layers (>= 1).
    """

    def __init__(self, in_dims: int, hidden_dims: int, out_dims: int, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f'num_layers must be >= 1, got {num_layers}')
        widths = [in_dims] + [hidden_dims] * (num_layers - 1) + [out_dims]
        self.layers = nn.ModuleList(
            nn.Linear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(..., in_dims)``. Returns ``(..., out_dims)``."""
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x


_ACTIVATIONS = {'relu': nn.ReLU, 'gelu': nn.GELU}


def build_activation(name: str) -> nn.Module:
    """FFN activation by name: ``'relu'`` (the paper) or ``'gelu'``.

    The official code also accepts ``'glu'``, which halves the hidden width and so does not fit
    ``linear2``; it is rejected here rather than failing later with a shape error.
    """
    if name not in _ACTIVATIONS:
        raise ValueError(f'activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}')
    return _ACTIVATIONS[name]()


class ResidualFFN(nn.Module):
    """The FFN sub-layer of encoder and decoder layers, without its norm:
    ``query + dropout(linear2(dropout(activation(linear1(query)))))``.

    A mixin base of the layers rather than a child module, so that ``linear1`` / ``linear2`` stay
    direct attributes of each layer (the official state-dict keys ``layers.{i}.linear1.*``); each
    layer owns its norm (``norm2`` in the encoder, ``norm3`` in the decoder) and calls
    ``norm(self.ffn_residual(query))``.
    """

    def _build_ffn(self, embed_dims: int, feedforward_channels: int, dropout: float,
                   activation: str) -> None:
        """Create ``linear1``, ``activation``, the two dropouts and ``linear2`` on the layer."""
        self.linear1 = nn.Linear(embed_dims, feedforward_channels)
        self.activation = build_activation(activation)
        self.ffn_hidden_dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward_channels, embed_dims)
        self.ffn_output_dropout = nn.Dropout(dropout)

    def ffn_residual(self, query: Tensor) -> Tensor:
        """Args: query ``(bs, n, C)``. Returns ``(bs, n, C)``, residual added, not normalised."""
        hidden = self.ffn_hidden_dropout(self.activation(self.linear1(query)))
        return query + self.ffn_output_dropout(self.linear2(hidden))


class LayerStack(nn.Module):
    """``num_layers`` separate layers of the subclass's ``layer_cls``, built with the same
    arguments (the encoder and the decoder; their ``forward`` says how the layers are chained).

    Args:
        num_layers: number of layers.
        embed_dims, num_heads, num_levels, num_points, feedforward_channels, dropout, activation,
        multi_scale_attention: passed to every layer.
    """

    layer_cls: ClassVar[Type[nn.Module]]

    def __init__(self, num_layers: int, embed_dims: int, num_heads: int, num_levels: int,
                 num_points: int, feedforward_channels: int, dropout: float, activation: str,
                 multi_scale_attention: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            self.layer_cls(embed_dims, num_heads, num_levels, num_points, feedforward_channels,
                           dropout, activation, multi_scale_attention)
            for _ in range(num_layers))
