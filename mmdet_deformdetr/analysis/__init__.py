"""Analysis helpers: FLOP handles for the deformable attention, and capture of the attention's
sampling locations for drawing."""

from .flops import MACS_PER_SAMPLE, deform_attn_handles
from .sampling import capture_sampling

__all__ = ['MACS_PER_SAMPLE', 'deform_attn_handles', 'capture_sampling']
