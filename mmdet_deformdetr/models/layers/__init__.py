"""Transformer building blocks."""
from .decoder import DeformableDecoder, DeformableDecoderLayer
from .encoder import DeformableEncoder, DeformableEncoderLayer
from .levelwise_attn import LevelwiseDeformAttn
from .msdeform_attn import MSDeformAttn
from .utils import RegressionMLP, inverse_sigmoid

__all__ = [
    'DeformableDecoder', 'DeformableDecoderLayer', 'DeformableEncoder', 'DeformableEncoderLayer',
    'LevelwiseDeformAttn', 'MSDeformAttn', 'RegressionMLP', 'inverse_sigmoid'
]
