"""The small elementwise steps of MSDeformAttn, fast on the CPU: a softmax over a short last axis,
the sampling locations (reference point + normalised offset), and skipping the value's padding
mask when nothing is padded.

Why: PyTorch's CPU kernels are slow for exactly these shapes. ``softmax(-1)`` over the ``L * K``
(12 or 16) attention logits of every query and head runs no faster than ~0.06 G elements/s, and the
broadcast ``offsets / normaliser[None, None, None, :, None, :]`` (an innermost broadcast axis of
size 2) falls off the vectorised path (timings: ``docs/performance.md``). The results are the same
operations in the same order up to the softmax's summation (float64: 4e-16).

Used on the CPU only, and never while tracing, exporting or compiling (ONNX keeps ``Softmax``,
graphs keep the plain broadcast and the masking): elsewhere the library kernels are already fast.
"""

import torch
from torch import Tensor

from .ms_deform_attn import capturing_graph


def _plain_path(x: Tensor) -> bool:
    """Library kernels: not on the CPU, while a graph is captured (``capturing_graph``) or while
    compiling (``torch.compile`` fuses these steps itself)."""
    return x.device.type != 'cpu' or capturing_graph() or torch.compiler.is_compiling()


def _softmax(x: Tensor) -> Tensor:
    """Softmax over the last axis from whole-tensor passes (max, exp, sum, divide)."""
    e = (x - x.amax(-1, keepdim=True)).exp_()
    return e.div_(e.sum(-1, keepdim=True))


class _SoftmaxLastDim(torch.autograd.Function):
    """``y = softmax(x, -1)``; backward ``dx = y * (dy - sum(dy * y, -1))``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = _softmax(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        grad_y = grad * y
        return grad_y.sub_(y * grad_y.sum(-1, keepdim=True))


def softmax_last_dim(x: Tensor) -> Tensor:
    """``x.softmax(-1)``, fast on the CPU for a short last axis (differentiable).

    Args:
        x: ``(..., n)`` logits, floating point.

    Returns:
        ``(..., n)`` probabilities summing to 1 over the last axis.
    """
    if _plain_path(x):
        return x.softmax(-1)
    if torch.is_grad_enabled() and x.requires_grad:
        return _SoftmaxLastDim.apply(x)
    return _softmax(x)


def point_locations(reference_points: Tensor, offsets: Tensor, normaliser: Tensor) -> Tensor:
    """Sampling locations ``reference + offset / (W, H)`` of point reference positions.

    Args:
        reference_points: ``(bs, nq, L, 2)`` normalised ``(x, y)``.
        offsets: ``(bs, nq, M, L, K, 2)`` in pixels of each level.
        normaliser: ``(L, 2)`` ``(W, H)`` of each level.

    Returns:
        ``(bs, nq, M, L, K, 2)`` normalised locations, the same numbers as
        ``reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :,
        None, :]``.
    """
    if _plain_path(offsets):
        return (
            reference_points[:, :, None, :, None, :]
            + offsets / normaliser[None, None, None, :, None, :]
        )
    bs, nq, heads, levels, points, _ = offsets.shape
    width = levels * points * 2
    # (L, 2) -> (L, K, 2) -> (L*K*2,): the broadcast moves to the outer axes, the inner one is
    # contiguous and wide enough to vectorise
    divisor = normaliser[:, None, :].expand(levels, points, 2).reshape(width)
    reference = reference_points[:, :, None, :, None, :].expand(bs, nq, 1, levels, points, 2)
    scaled = offsets.reshape(bs, nq, heads, width) / divisor
    return (reference.reshape(bs, nq, 1, width) + scaled).view(offsets.shape)


def box_locations(reference_boxes: Tensor, offsets: Tensor) -> Tensor:
    """Sampling locations ``centre + offset / K * (w, h) / 2`` of box reference positions.

    Args:
        reference_boxes: ``(bs, nq, L, 4)`` normalised ``(cx, cy, w, h)``.
        offsets: ``(bs, nq, M, L, K, 2)``, in units of the half box size times ``K``.

    Returns:
        ``(bs, nq, M, L, K, 2)`` normalised locations, the same numbers as
        ``centre[:, :, None, :, None] + offsets / K * size[:, :, None, :, None] * 0.5``.
    """
    points = offsets.shape[4]
    if _plain_path(offsets):
        return (
            reference_boxes[:, :, None, :, None, :2]
            + offsets / points * reference_boxes[:, :, None, :, None, 2:] * 0.5
        )
    bs, nq, heads, levels, _, _ = offsets.shape
    width = levels * points * 2
    shape = (bs, nq, 1, levels, points, 2)
    centre = reference_boxes[:, :, None, :, None, :2].expand(shape).reshape(bs, nq, 1, width)
    size = reference_boxes[:, :, None, :, None, 2:].expand(shape).reshape(bs, nq, 1, width)
    scaled = offsets.reshape(bs, nq, heads, width) / points * size * 0.5
    return (centre + scaled).view(offsets.shape)


def padding_is_empty(mask: Tensor) -> bool:
    """True when a padding mask masks nothing, checked on the CPU only (elsewhere the check would
    wait for the device, and a traced graph must keep the masking): False there.

    Args:
        mask: ``(bs, n)`` bool, True at padding.
    """
    return not _plain_path(mask) and not bool(mask.any())
