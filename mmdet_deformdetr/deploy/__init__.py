"""Deployment: ONNX export of a DeformDETR with its post-process, a detector over the file in
onnxruntime or OpenVINO, and the check of a file against PyTorch (``deploy.verify``).

``onnx``, ``onnxscript``, ``onnxruntime`` and ``openvino`` are optional (``pip install -e
.[deploy]``); they are imported only by the functions that need them.
"""

from .backends import BACKENDS, OV_PRECISIONS, create_session
from .exportable import ExportableDeformDETR, use_reference_attention
from .onnx_export import OPSET, export_onnx, read_metadata
from .onnx_runtime import OnnxDetector

__all__ = [
    'BACKENDS',
    'OV_PRECISIONS',
    'create_session',
    'ExportableDeformDETR',
    'use_reference_attention',
    'OPSET',
    'export_onnx',
    'read_metadata',
    'OnnxDetector',
]
