"""Box and reference-point geometry shared by the transformer, the decoder and the head.

Pure functions of their tensor arguments. Coordinates are normalised to [0, 1] and ordered
``(x, y)`` / ``(cx, cy, w, h)``. Two spaces appear: the *valid* image (1.0 is the image border) in
which boxes are predicted, and each level's *padded* map (1.0 is the padding border) in which the
sampling operator reads; ``valid_ratios`` convert between them.
"""

from typing import List

import torch
from torch import Tensor

from ..ops import SpatialShapes, level_shapes


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


def encoder_reference_points(spatial_shapes: SpatialShapes, valid_ratios: Tensor) -> Tensor:
    """Reference point of every encoder query, as seen from every feature level.

    A query is the centre of its pixel; the centre is normalised by the *valid* size of its level
    (so that 1.0 is the image border, not the padding border), then multiplied by each level's
    valid ratio to express it in that level's padded coordinates, which is what the sampling
    operator expects.

    Args:
        spatial_shapes: ``(L, 2)`` long tensor or L ``(H_l, W_l)`` pairs.
        valid_ratios: ``(bs, L, 2)`` floating, ``(w, h)`` valid ratios of each level.

    Returns:
        ``(bs, sum_l H_l * W_l, L, 2)`` normalised ``(x, y)``, dtype of ``valid_ratios``.
    """
    dtype, device = valid_ratios.dtype, valid_ratios.device
    per_level: List[Tensor] = []
    for level, (height, width) in enumerate(level_shapes(spatial_shapes)):
        centre_y, centre_x = torch.meshgrid(
            torch.arange(height, dtype=dtype, device=device) + 0.5,
            torch.arange(width, dtype=dtype, device=device) + 0.5,
            indexing='ij',
        )
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
        raise ValueError(
            'reference_points must end in 2 (points) or 4 (boxes), got shape '
            f'{tuple(reference_points.shape)}'
        )
    return reference_points[:, :, None] * valid_ratios[:, None]
