"""Data the project generates itself (no downloads): the synthetic shapes detection dataset."""
from .synthetic_shapes import CLASSES, ShapesConfig, generate_shapes_dataset, render_image

__all__ = ['CLASSES', 'ShapesConfig', 'generate_shapes_dataset', 'render_image']
