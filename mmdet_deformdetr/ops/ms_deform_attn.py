"""``multi_scale_deformable_attn``: one entry point, three implementations.

``impl`` picks the implementation:

* ``'cuda'``: mmcv's ``MultiScaleDeformableAttnFunction`` (CUDA tensors, mmcv built with CUDA);
* ``'cpu'``: our C++ kernel (``csrc/ms_deform_attn_cpu.cpp``), JIT-built on first use; if it cannot
  be built, the reference is used after one warning naming the build error;
* ``'pytorch'``: the ``grid_sample`` reference (any device; tracing and ONNX export);
* ``'auto'``: ``'cuda'`` for CUDA tensors when mmcv has CUDA ops, ``'cpu'`` for CPU tensors,
  ``'pytorch'`` otherwise and while tracing or exporting (``torch.jit``, ``torch.onnx``,
  ``torch.export``). CUDA tensors without mmcv's CUDA op take ``'pytorch'`` after one warning per
  process that names the cause and the fix.

Mixed precision: whatever the input dtypes (e.g. bf16 under ``torch.autocast``), the op computes in
float32 (float64 stays float64) with autocast disabled, and returns ``value``'s dtype. Bilinear
sampling positions need more than bf16's 8 mantissa bits: ``x * W`` with ``W = 152`` would be off by
up to half a pixel.

Non-finite inputs: ``'cpu'`` and ``'pytorch'`` agree, forward and backward, and follow
``grid_sample`` (zero padding, then times the weight): a NaN or infinite sampling location or
attention weight makes the output row of its (query, head) NaN (or inf), whether the point lies
inside the map or outside it (``0 * nan``), so a diverging model shows up in the loss instead of
being silently masked. mmcv's CUDA kernel (``'cuda'``) differs: it skips a NaN location (finite
output). ``level_start_index`` must equal the cumulative sum of ``H * W`` (checked on the host,
once per call, except while tracing).
"""

import functools
import warnings
from typing import Optional

import torch
from torch import Tensor

from .cpu_kernel import MSDeformAttnCPUFunction, load_cpu_extension, ms_deform_attn_cpu_op
from .reference import multi_scale_deformable_attn_reference
from .shapes import SpatialShapes, level_shapes, shapes_tensor

IMPLS = ('auto', 'cpu', 'cuda', 'pytorch')


@functools.cache
def mmcv_cuda_problem() -> Optional[str]:
    """Why mmcv's CUDA op cannot run here, or None when it can (torch sees a GPU and mmcv's compiled
    ops were built with CUDA).

    mmcv reports the CUDA version its extension was compiled with, or ``'not available'`` for a CPU
    build; importing mmcv.ops may itself fail (mmcv missing, or built without ops), which counts as
    "no".
    """
    if not torch.cuda.is_available():
        return 'torch sees no CUDA GPU'
    try:
        from mmcv.ops.info import get_compiling_cuda_version

        compiled_cuda = get_compiling_cuda_version()
    except Exception as error:  # noqa: BLE001 - any failure to load mmcv's extension: not usable
        return f'mmcv.ops does not load ({type(error).__name__}: {error})'
    if not compiled_cuda or compiled_cuda == 'not available':
        return f'mmcv {_mmcv_version()} was compiled without CUDA'
    return None


@functools.cache
def mmcv_cuda_available() -> bool:
    """True when torch sees a GPU and mmcv's compiled ops were built with CUDA."""
    return mmcv_cuda_problem() is None


def _mmcv_version() -> str:
    try:
        import mmcv

        return mmcv.__version__
    except Exception:  # noqa: BLE001 - only for a message
        return '(version unknown)'


@functools.cache
def _warn_cuda_fallback() -> None:
    """Say once per process that CUDA tensors run the slow reference, and how to fix it."""
    warnings.warn(
        'CUDA tensors reach the deformable attention, but mmcv has no usable CUDA op '
        f'({mmcv_cuda_problem() or "mmcv_cuda_available() is False"}): it falls back to the '
        'grid_sample reference, many times slower than the CUDA kernel. Fix: install an mmcv '
        'built with its ops for this torch and CUDA (MMCV_WITH_OPS=1 with nvcc on PATH, see '
        'docs/installation.md), then check with `python tools/misc/check_install.py`.',
        RuntimeWarning,
        stacklevel=4,
    )


def _check_inputs(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> None:
    """Raise ValueError naming the first argument whose shape (or, for ``spatial_shapes`` and
    ``level_start_index``, values) does not fit the others."""
    if value.dim() != 4:
        raise ValueError(f'value must be (bs, num_keys, M, D), got shape {tuple(value.shape)}')
    bs, num_keys, num_heads, _ = value.shape
    if isinstance(spatial_shapes, Tensor):
        if (
            spatial_shapes.dim() != 2
            or spatial_shapes.shape[1] != 2
            or spatial_shapes.is_floating_point()
        ):
            raise ValueError(
                'spatial_shapes must be an integer (L, 2) tensor of (H, W), got '
                f'{spatial_shapes.dtype} {tuple(spatial_shapes.shape)}'
            )
    elif any(len(pair) != 2 for pair in spatial_shapes):
        raise ValueError(f'spatial_shapes must be (H, W) pairs, got {list(spatial_shapes)}')
    num_levels = len(spatial_shapes)
    if tuple(level_start_index.shape) != (num_levels,) or level_start_index.is_floating_point():
        raise ValueError(
            f'level_start_index must be an integer ({num_levels},) tensor, got '
            f'{level_start_index.dtype} {tuple(level_start_index.shape)}'
        )
    if (
        sampling_locations.dim() != 6
        or sampling_locations.shape[0] != bs
        or sampling_locations.shape[2] != num_heads
        or sampling_locations.shape[3] != num_levels
        or sampling_locations.shape[5] != 2
    ):
        raise ValueError(
            f'sampling_locations must be (bs, nq, M, L, K, 2) = ({bs}, nq, '
            f'{num_heads}, {num_levels}, K, 2), got '
            f'{tuple(sampling_locations.shape)}'
        )
    if attention_weights.shape != sampling_locations.shape[:5]:
        raise ValueError(
            f'attention_weights must be (bs, nq, M, L, K) = '
            f'{tuple(sampling_locations.shape[:5])}, got '
            f'{tuple(attention_weights.shape)}'
        )
    if isinstance(spatial_shapes, Tensor):
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return  # the values below would be baked into the graph as constants
        # One host transfer for both tensors (one sync on CUDA; L <= 5 numbers): worth it, as
        # mmcv's kernel would read out of bounds, and ours would read the wrong level, on a bad
        # index. The grid_sample path ignores level_start_index, so without this check it alone
        # would "work".
        host = torch.cat(
            [
                spatial_shapes.reshape(-1),
                level_start_index.reshape(-1).to(spatial_shapes.device, spatial_shapes.dtype),
            ]
        ).tolist()
        shapes, starts = host[: 2 * num_levels], host[2 * num_levels :]
        sizes = [shapes[2 * i] * shapes[2 * i + 1] for i in range(num_levels)]
    else:
        # Python (possibly symbolic) ints: the key count needs no transfer, and torch.export
        # proves it from the feature shapes; level_start_index is then read like the tensors
        sizes = [height * width for height, width in spatial_shapes]
        starts = (
            None
            if torch.jit.is_tracing() or torch.compiler.is_compiling()
            else level_start_index.tolist()
        )
    expected_keys = sum(sizes)
    if expected_keys != num_keys:
        raise ValueError(
            f'value has {num_keys} keys but spatial_shapes '
            f'{level_shapes(spatial_shapes)} need sum(H * W) = {expected_keys}'
        )
    if starts is None:
        return  # tracing / exporting / compiling: the index is data of the graph
    expected_starts = [sum(sizes[:i]) for i in range(num_levels)]
    if starts != expected_starts:
        raise ValueError(
            f'level_start_index {starts} disagrees with spatial_shapes '
            f'{level_shapes(spatial_shapes)}: each level must start where the '
            f'previous ends, i.e. {expected_starts} (cumulative sum of H * W)'
        )


def capturing_graph() -> bool:
    """True while a graph is being traced, scripted or exported (``torch.jit``, ``torch.onnx``,
    ``torch.export``, which the ONNX exporter of torch >= 2.9 runs): then only library ops and
    no data-dependent Python may run."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
    )


def _select_impl(value: Tensor, impl: str) -> str:
    """Resolve ``impl`` for ``value``'s device; raise for impossible requests."""
    if impl not in IMPLS:
        raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
    if impl == 'auto':
        if capturing_graph():
            return 'pytorch'
        if value.is_cuda:
            if mmcv_cuda_available():
                return 'cuda'
            _warn_cuda_fallback()
            return 'pytorch'
        return 'cpu' if value.device.type == 'cpu' else 'pytorch'
    if impl == 'cuda' and not (value.is_cuda and mmcv_cuda_available()):
        raise RuntimeError(
            "impl='cuda' needs CUDA tensors and mmcv built with CUDA ops "
            f'(value is on {value.device}, mmcv CUDA ops available: '
            f'{mmcv_cuda_available()})'
        )
    if impl == 'cpu' and value.device.type != 'cpu':
        raise RuntimeError(f"impl='cpu' needs CPU tensors, value is on {value.device}")
    return impl


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half and bf16 are promoted)."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _mmcv_im2col_step(batch_size: int, im2col_step: int) -> int:
    """Largest divisor of ``batch_size`` not above ``im2col_step``: mmcv's kernel asserts that
    ``batch_size`` is a multiple of ``min(batch_size, im2col_step)``."""
    step = max(1, min(batch_size, im2col_step))
    while batch_size % step:
        step -= 1
    return step


def _run(
    impl: str,
    value: Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int,
) -> Tensor:
    if impl in ('cuda', 'cpu'):
        spatial_shapes = shapes_tensor(spatial_shapes, value.device)  # the kernels read a tensor
    if impl == 'cuda':
        from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction

        # mmcv's kernel asserts contiguous inputs, and int64 shapes on the value's device.
        return MultiScaleDeformableAttnFunction.apply(
            value.contiguous(),
            spatial_shapes.to(value.device, torch.long).contiguous(),
            level_start_index.to(value.device, torch.long).contiguous(),
            sampling_locations.contiguous(),
            attention_weights.contiguous(),
            _mmcv_im2col_step(value.shape[0], im2col_step),
        )
    if impl == 'cpu' and torch.compiler.is_compiling():
        # torch.compile / torch.export with impl='cpu': the kernel as one torch.library node
        return ms_deform_attn_cpu_op(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    if impl == 'cpu' and load_cpu_extension() is not None:
        return MSDeformAttnCPUFunction.apply(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    # 'pytorch', or 'cpu' after a failed build (load_cpu_extension has warned once).
    return multi_scale_deformable_attn_reference(
        value, spatial_shapes, sampling_locations, attention_weights
    )


def multi_scale_deformable_attn(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int = 64,
    impl: str = 'auto',
) -> Tensor:
    """Multi-scale deformable attention (Zhu et al., ICLR 2021, Eq. 3, after the projections).

    Args:
        value: ``(bs, num_keys, M, D)``, the L flattened feature maps, level after level, split in M
            heads of D channels.
        spatial_shapes: ``(L, 2)`` integer tensor or L Python ``(H, W)`` pairs (the form that
            stays symbolic under ``torch.export``, see ``ops/shapes.py``), ``(H, W)`` of each
            level; ``sum(H * W) == num_keys``.
        level_start_index: ``(L,)`` integer, index of each level's first key.
        sampling_locations: ``(bs, num_queries, M, L, K, 2)``, normalised ``(x, y)``: ``(0, 0)`` is
            the top-left corner and ``(1, 1)`` the bottom-right corner of the map (grid_sample with
            align_corners=False); bilinear corners outside the map read 0.
        attention_weights: ``(bs, num_queries, M, L, K)``, the weight of each sampled value.
        im2col_step: batch chunk of mmcv's CUDA kernel (rounded down to a divisor of bs); unused by
            the other implementations.
        impl: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'pytorch'`` (see the module docstring).

    Returns:
        ``(bs, num_queries, M * D)`` in ``value``'s dtype: per head, the attention-weighted sum of
        the bilinearly sampled values, heads concatenated.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if im2col_step < 1:
        raise ValueError(f'im2col_step must be >= 1, got {im2col_step}')
    resolved = _select_impl(value, impl)
    compute_dtype = _compute_dtype(value, sampling_locations, attention_weights)
    args = (
        resolved,
        value.to(compute_dtype),
        spatial_shapes,
        level_start_index,
        sampling_locations.to(compute_dtype),
        attention_weights.to(compute_dtype),
        im2col_step,
    )
    if value.device.type not in ('cpu', 'cuda'):
        return _run(*args).to(value.dtype)
    # Autocast would run grid_sample and the weighted sum in bf16 again; keep full precision.
    with torch.autocast(device_type=value.device.type, enabled=False):
        return _run(*args).to(value.dtype)
