"""Padding that changes nothing: an image computes the same inside a padded batch as alone.

mmdet pads every image of a batch at the bottom and the right to the largest one. Alone, an
image's convolutions see zeros beyond its border (their own zero padding) and its GroupNorm
statistics cover the image only. In a padded batch the padded positions hold features that are not
zero after the first layer (a frozen BatchNorm's shift through a ReLU, a bias), so the
convolutions at the image's right and bottom border read them, and the neck's GroupNorm
averages over them. The level masks of the official code (nearest interpolation of the image
mask) can also disagree by a row or column with the features a level really holds, and the
two-stage selection can keep padded tokens as queries.

At evaluation :class:`~mmdet_deformdetr.models.detector.DeformDETR` removes all four
(``docs/faithfulness.md``):

- before every convolution with a kernel larger than 1 (and mmcv's deformable convolutions),
  padded positions are set to zero, what the convolution's own padding reads alone; before a
  max-pool they are set to ``-inf``, what its padding reads alone (and a window of padding only
  gives 0, not ``-inf``);
- every ``GroupNorm`` takes its mean and variance over the image's positions only;
- each level's mask is exact: a map at stride ``s`` holds the input pixel ``(y * s, x * s)`` at
  ``(y, x)``, so the image covers its first ``ceil(h / s)`` rows and ``ceil(w / s)`` columns;
- two-stage never turns a padded token into a query (``two_stage.proposal_queries``).

The masks are computed from the images' sizes with tensor operations only and each module's
stride is a Python int found once (:func:`probe_strides`), so ``torch.export`` traces the masked
path with symbolic sizes. The strides assume the usual "same" padding of convolutional backbones
(a stride-``s`` layer with kernel ``k`` pads ``(k - 1) // 2``, giving ``ceil(H / s)`` outputs):
ResNet, ResNeXt (with or without DCN) and the necks that keep each level's resolution.
"""

from contextlib import contextmanager
from functools import partial
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

try:  # mmcv's deformable convolutions read neighbours too (DCN backbones)
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d

    _SPATIAL_CONVS: Tuple[type, ...] = (nn.Conv2d, DeformConv2d, ModulatedDeformConv2d)
except ImportError:  # mmcv without its compiled ops
    _SPATIAL_CONVS = (nn.Conv2d,)

#: side of the square zero image whose forward gives every module's stride (a power of two larger
#: than the largest stride of the shipped models, 64)
PROBE_SIZE = 256


def _is_spatial(module: nn.Module) -> bool:
    kernel = getattr(module, 'kernel_size', 1)
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    return max(kernel) > 1


def maskable_modules(root: nn.Module, prefix: str) -> Iterator[Tuple[str, nn.Module]]:
    """The modules of ``root`` that mix neighbouring positions or compute statistics over them:
    convolutions and max-pools with a kernel larger than 1, and ``GroupNorm``. Names carry
    ``prefix`` (``'backbone'``, ``'neck'``)."""
    for name, module in root.named_modules(prefix=prefix):
        if isinstance(module, nn.GroupNorm):
            yield name, module
        elif isinstance(module, (*_SPATIAL_CONVS, nn.MaxPool2d)) and _is_spatial(module):
            yield name, module


def probe_strides(
    backbone: nn.Module, neck: nn.Module, channels: int = 3
) -> Tuple[Dict[str, int], List[int]]:
    """Stride of the input of every maskable module, and of every output level.

    Runs ``neck(backbone(zeros))`` once on a ``PROBE_SIZE`` square image, without gradients and
    in eval mode (BatchNorm statistics untouched; a module in training mode is put back after).

    Returns:
        ``{module name: stride}`` and the L level strides.
    """
    sizes: Dict[str, int] = {}
    modules = [*maskable_modules(backbone, 'backbone'), *maskable_modules(neck, 'neck')]

    def record(name: str, module: nn.Module, args: Tuple[Tensor, ...]) -> None:
        sizes[name] = args[0].shape[-2]

    handles = [module.register_forward_pre_hook(partial(record, name)) for name, module in modules]
    param = next(backbone.parameters())
    training = [(root, root.training) for root in (backbone, neck)]
    try:
        backbone.eval()
        neck.eval()
        with torch.no_grad():
            image = torch.zeros(1, channels, PROBE_SIZE, PROBE_SIZE, dtype=param.dtype)
            feats = neck(backbone(image.to(param.device)))
    finally:
        for handle in handles:
            handle.remove()
        for root, mode in training:
            if mode:
                root.train()
    level_sizes = {f'level {i}': feat.shape[-2] for i, feat in enumerate(feats)}
    strides = {name: _stride(name, size) for name, size in {**sizes, **level_sizes}.items()}
    levels = [strides.pop(name) for name in level_sizes]
    return strides, levels


def _stride(name: str, size: int) -> int:
    stride = PROBE_SIZE // size
    if size * stride != PROBE_SIZE or stride & (stride - 1):
        raise ValueError(
            f'{name}: a {PROBE_SIZE} px image gives a {size} px map there, not a power-of-two '
            'stride; exact padding masks need "same"-padded layers (set '
            'model.batch_invariant_eval=False)'
        )
    return stride


def padding_mask(valid_hw: Tensor, height: int, width: int, stride: int) -> Tensor:
    """Where a map at ``stride`` holds padding.

    Args:
        valid_hw: ``(bs, 2)`` int64 ``(h, w)`` of each image in input pixels.
        height, width: the map's size (Python or symbolic ints).
        stride: the map's stride in input pixels.

    Returns:
        ``(bs, height, width)`` bool, True at padding: ``(y, x)`` holds input pixel
        ``(y * stride, x * stride)``, padding when that lies outside the image.
    """
    rows = torch.arange(height, device=valid_hw.device) * stride
    cols = torch.arange(width, device=valid_hw.device) * stride
    return (rows[None, :, None] >= valid_hw[:, 0, None, None]) | (
        cols[None, None, :] >= valid_hw[:, 1, None, None]
    )


def level_padding_masks(
    feats: Sequence[Tensor], valid_hw: Tensor, level_strides: Sequence[int]
) -> List[Tensor]:
    """Exact masks of the L levels ``(bs, C, H_l, W_l)``: L bool ``(bs, H_l, W_l)``."""
    return [
        padding_mask(valid_hw, feat.shape[-2], feat.shape[-1], stride)
        for feat, stride in zip(feats, level_strides)
    ]


def masked_group_norm(x: Tensor, padding: Tensor, norm: nn.GroupNorm) -> Tensor:
    """``norm(x)`` with each image's mean and variance taken over its valid positions only.

    Args:
        x: ``(bs, C, H, W)``.
        padding: ``(bs, H, W)`` bool, True at padding.
        norm: the ``GroupNorm`` (groups, eps, affine parameters).

    Returns:
        ``(bs, C, H, W)`` in at least float32 (as ``group_norm`` under autocast); padded positions
        hold values normalised with the image's statistics, which nothing downstream reads.
    """
    batch_size, channels, height, width = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)
    grouped = x.to(dtype).reshape(batch_size, norm.num_groups, -1, height * width)
    valid = (~padding).reshape(batch_size, 1, 1, height * width)
    count = valid.sum(-1, keepdim=True).to(dtype) * grouped.shape[2]
    # where, not a product: whatever the padding holds (even inf or NaN) stays out
    mean = grouped.where(valid, 0.0).sum((2, 3), keepdim=True) / count
    centred = grouped - mean
    var = centred.square().where(valid, 0.0).sum((2, 3), keepdim=True) / count
    out = (centred * torch.rsqrt(var + norm.eps)).reshape(batch_size, channels, height, width)
    if norm.affine:
        out = out * norm.weight.to(dtype)[:, None, None] + norm.bias.to(dtype)[:, None, None]
    return out


def _fill_padding(
    valid_hw: Tensor, stride: int, fill: float, module: nn.Module, args: Tuple[Tensor, ...]
) -> Tuple[Tensor, ...]:
    x = args[0]
    padding = padding_mask(valid_hw, x.shape[-2], x.shape[-1], stride)
    return (x.masked_fill(padding[:, None], fill), *args[1:])


def _no_infinite_output(module: nn.Module, args: Tuple[Tensor, ...], output: Tensor) -> Tensor:
    # a window of padding only pools -inf: zero, so that no later product makes a NaN of it
    return output.masked_fill(output == float('-inf'), 0.0)


def _normalise_image_only(
    valid_hw: Tensor, stride: int, module: nn.GroupNorm, args: Tuple[Tensor, ...], output: Tensor
) -> Tensor:
    x = args[0]
    padding = padding_mask(valid_hw, x.shape[-2], x.shape[-1], stride)
    return masked_group_norm(x, padding, module).to(output.dtype)


@contextmanager
def padding_kept_out(
    roots: Dict[str, nn.Module], valid_hw: Optional[Tensor], strides: Dict[str, int]
) -> Iterator[None]:
    """Within the block, the maskable modules of ``roots`` (``{prefix: module}``) keep the padding
    of the images ``valid_hw (bs, 2)`` out of their result (see the module docstring); nothing
    changes when ``valid_hw`` is None. Hooks are added on entry and removed on exit, so the modules
    (and whatever replaces them later, such as fused convolutions) stay plain."""
    if valid_hw is None:
        yield
        return
    handles = []
    try:
        for prefix, root in roots.items():
            for name, module in maskable_modules(root, prefix):
                stride = strides[name]
                if isinstance(module, nn.GroupNorm):
                    hook = partial(_normalise_image_only, valid_hw, stride)
                    handles.append(module.register_forward_hook(hook))
                else:
                    pool = isinstance(module, nn.MaxPool2d)
                    hook = partial(_fill_padding, valid_hw, stride, float('-inf') if pool else 0.0)
                    handles.append(module.register_forward_pre_hook(hook))
                    if pool:
                        handles.append(module.register_forward_hook(_no_infinite_output))
        yield
    finally:
        for handle in handles:
            handle.remove()
