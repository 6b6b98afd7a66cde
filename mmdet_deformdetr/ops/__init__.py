"""Multi-scale deformable attention op: mmcv CUDA / our C++ CPU kernel / grid_sample reference."""

from .ms_deform_attn import (
    IMPLS,
    mmcv_cuda_available,
    mmcv_cuda_problem,
    multi_scale_deformable_attn,
)
from .reference import multi_scale_deformable_attn_reference
from .shapes import SpatialShapes, level_shapes, shapes_tensor

__all__ = [
    'IMPLS',
    'mmcv_cuda_available',
    'mmcv_cuda_problem',
    'multi_scale_deformable_attn',
    'multi_scale_deformable_attn_reference',
    'SpatialShapes',
    'level_shapes',
    'shapes_tensor',
]
