"""Data: the synthetic shapes dataset the project generates (no downloads), and the checks that
turn bad data into clear messages (``CheckedCocoDataset``, ``CheckNumClassesHook``, and the rules
of ``checks`` that ``tools/misc/check_dataset.py`` shares)."""

from .checked_coco import CheckedCocoDataset
from .checks import BadDataError
from .hooks import CheckNumClassesHook
from .synthetic_shapes import CLASSES, ShapesConfig, generate_shapes_dataset, render_image

__all__ = [
    'CLASSES',
    'BadDataError',
    'CheckNumClassesHook',
    'CheckedCocoDataset',
    'ShapesConfig',
    'generate_shapes_dataset',
    'render_image',
]
