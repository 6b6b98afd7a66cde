"""Transformer building blocks: the deformable attentions and the encoder / decoder layers."""

from .decoder import DeformableDecoder, DeformableDecoderLayer
from .encoder import DeformableEncoder, DeformableEncoderLayer
from .msdeform_attn import MSDeformAttn
from .single_scale_attn import SingleScaleDeformAttn

__all__ = [
    'DeformableDecoder',
    'DeformableDecoderLayer',
    'DeformableEncoder',
    'DeformableEncoderLayer',
    'MSDeformAttn',
    'SingleScaleDeformAttn',
]
