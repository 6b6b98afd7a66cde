"""The per-level ``(H, W)`` of the flattened feature maps, as a tensor or as Python ints.

``spatial_shapes`` is mmcv's ``(L, 2)`` integer tensor. Every function of ours that takes it also
takes a sequence of ``L`` ``(H, W)`` pairs, which is what ``DeformableDetrTransformer`` hands
down. Why both: the shapes are read as Python ints wherever a loop over levels splits, reshapes
or builds grids, and under ``torch.export`` (the ONNX exporter of torch >= 2.9) Python ints taken
from feature-map shapes stay *symbolic*, while ints read back from a tensor (``.tolist()``) are
data-dependent and cannot be traced: the exported graph would fail, or bake in the example's
height and width. Eager results are identical either way.
"""

from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

SpatialShapes = Union[Tensor, Sequence[Tuple[int, int]]]


def level_shapes(spatial_shapes: SpatialShapes) -> List[Tuple[int, int]]:
    """``(H, W)`` of every level as Python (or symbolic) ints.

    Args:
        spatial_shapes: ``(L, 2)`` integer tensor, or L ``(H, W)`` pairs.

    Returns:
        L ``(H, W)`` tuples. A tensor is read back (one host sync on CUDA); a sequence is returned
        as it is, without ``int()`` (which would turn a symbolic size into a constant).
    """
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]


def shapes_tensor(spatial_shapes: SpatialShapes, device: torch.device) -> Tensor:
    """``spatial_shapes`` as mmcv's ``(L, 2)`` tensor; a tensor is returned unchanged.

    Args:
        spatial_shapes: ``(L, 2)`` integer tensor, or L ``(H, W)`` pairs.
        device: where a tensor built from pairs goes.
    """
    if isinstance(spatial_shapes, Tensor):
        return spatial_shapes
    return torch.tensor([[h, w] for h, w in spatial_shapes], dtype=torch.long, device=device)
