"""mmdet-deformdetr: Deformable DETR as an MMDetection 3.x plugin.

Importing this package registers every module of ours in mmdet's registries. Registration happens
here and nowhere else.
"""
from mmdet.registry import MODELS

from .version import __version__

__all__ = ['__version__']
