"""Multiply-add counts of Deformable DETR with mmengine's ``FlopAnalyzer``, the deformable
attention included.

mmengine (like fvcore, which the paper's FLOPs come from) counts one FLOP per multiply-add and
only the operators it has handles for. Our deformable attention reaches the traced graph in one of
two forms, and both get a handle here, so that both give the same count:

* our C++ kernel (``impl='cpu'``), or mmcv's CUDA op, as one ``torch.autograd.Function``
  (``prim::PythonOp.MSDeformAttnCPUFunction`` / ``...MultiScaleDeformableAttnFunction``), which
  mmengine does not know and would count as 0;
* the ``grid_sample`` reference (``impl='pytorch'``; also mmcv's
  ``multi_scale_deformable_attn_pytorch``): ``aten::grid_sampler`` per level, then a weighted sum
  that mmengine does not count (elementwise ``mul`` / ``sum``), while its default
  ``grid_sampler`` handle counts 4 per sampled value.

Per sampled point and channel the attention costs :data:`MACS_PER_SAMPLE` = 5 multiply-adds: 4
for the bilinear interpolation (one per corner) and 1 for the attention weight. Per query that is
``5 * M * L * K * D = 5 * C * L * K`` (20,480 for C = 256, L = K = 4). The handful of operations
per *point* that compute corner weights are not counted (as no elementwise op is).
"""

from typing import Any, Dict, List

from mmengine.analysis.jit_handles import Handle, get_shape

BILINEAR_MACS = 4  # one multiply-add per corner of the bilinear interpolation, per channel
WEIGHT_MACS = 1  # the attention weight applied to each sampled value, per channel
MACS_PER_SAMPLE = BILINEAR_MACS + WEIGHT_MACS

#: traced names of the fused deformable-attention functions (ours on CPU, mmcv's on CUDA)
FUSED_OPS = (
    'prim::PythonOp.MSDeformAttnCPUFunction',
    'prim::PythonOp.MultiScaleDeformableAttnFunction',
)


def fused_deform_attn_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of the fused op: inputs ``value (bs, num_keys, M, D)``, ``spatial_shapes``,
    ``level_start_index``, ``sampling_locations (bs, nq, M, L, K, 2)``, ``attention_weights``."""
    bs, _, num_heads, head_dims = get_shape(inputs[0])
    _, num_queries, _, num_levels, num_points, _ = get_shape(inputs[3])
    return MACS_PER_SAMPLE * bs * num_queries * num_heads * num_levels * num_points * head_dims


def grid_sample_deform_attn_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Handle of ``aten::grid_sampler`` in the reference attention: output ``(bs * M, D, nq, K)``
    holds one value per sampled point and channel of one level; each costs the bilinear
    interpolation and its attention weight (the weighted sum that follows is counted here, as
    mmengine has no handle for it). In this model ``grid_sample`` appears only there."""
    shape = get_shape(outputs[0])
    count = 1
    for size in shape:
        count *= size
    return MACS_PER_SAMPLE * count


def deform_attn_handles() -> Dict[str, Handle]:
    """``FlopAnalyzer.set_op_handle(**deform_attn_handles())``: both forms of the attention."""
    handles: Dict[str, Handle] = {name: fused_deform_attn_flop_jit for name in FUSED_OPS}
    handles['aten::grid_sampler'] = grid_sample_deform_attn_flop_jit
    return handles
