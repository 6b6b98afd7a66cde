"""Deployment: ONNX export of a DeformDETR with its post-process, and an onnxruntime detector.

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional (``pip install -e .[deploy]``); they are
imported only by the functions that need them.
"""

from .exportable import ExportableDeformDETR, use_reference_attention
from .onnx_export import OPSET, export_onnx, read_metadata
from .onnx_runtime import OnnxDetector

__all__ = [
    'ExportableDeformDETR',
    'use_reference_attention',
    'OPSET',
    'export_onnx',
    'read_metadata',
    'OnnxDetector',
]
