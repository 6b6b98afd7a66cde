"""Model components of mmdet-deformdetr (registered in ``mmdet_deformdetr/__init__.py``)."""

from .layers import MSDeformAttn

__all__ = ['MSDeformAttn']
