"""Run an exported DeformDETR with onnxruntime on images, as the PyTorch path would.

Pre-processing is the config's own: mmdet's test pipeline (resize, ...) and the model's
``DetDataPreprocessor`` (mean/std, BGR -> RGB), built from the config, with padding switched off
because the graph assumes unpadded images. Boxes come back in original-image pixels.
"""

import json
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import get_test_pipeline_cfg
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.structures import InstanceData

from .onnx_export import INPUT_NAME, METADATA_KEY, require_onnx


def _test_pipeline(cfg: Config) -> Compose:
    """The config's test pipeline, reading paths or arrays (as mmdet's ``DetInferencer``)."""
    pipeline = [dict(step) for step in get_test_pipeline_cfg(cfg)]
    for step in pipeline:
        if step['type'] in ('LoadImageFromFile', 'mmdet.LoadImageFromFile'):
            step['type'] = 'mmdet.InferencerLoader'
        if step['type'] == 'PackDetInputs' and 'meta_keys' in step:
            step['meta_keys'] = tuple(key for key in step['meta_keys'] if key != 'img_id')
    return Compose([step for step in pipeline if 'LoadAnnotations' not in step['type']])


class OnnxDetector:
    """An exported model in an onnxruntime CPU session, with the config's pre-processing.

    Args:
        onnx_path: a file written by ``tools/deployment/export_onnx.py``.
        config: the model's config (path or ``Config``): test pipeline and data preprocessor.
        num_threads: onnxruntime intra-op threads (None: onnxruntime's default, one per core).
    """

    def __init__(
        self,
        onnx_path: Union[str, Path],
        config: Union[str, Path, Config],
        num_threads: Optional[int] = None,
    ) -> None:
        require_onnx()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), options, providers=['CPUExecutionProvider']
        )
        custom = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in custom:
            raise ValueError(
                f'{onnx_path} has no {METADATA_KEY!r} metadata: it was not written '
                'by tools/deployment/export_onnx.py; export the model with that '
                'tool'
            )
        self.metadata: Dict[str, object] = json.loads(custom[METADATA_KEY])
        cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
        self.pipeline = _test_pipeline(cfg)
        preprocessor = dict(cfg.model.data_preprocessor)
        preprocessor.update(pad_size_divisor=1, pad_mask=False)
        self.preprocessor = MODELS.build(preprocessor)

    @property
    def classes(self) -> Tuple[str, ...]:
        return tuple(self.metadata.get('classes') or ())

    def preprocess(self, image: Union[str, np.ndarray]) -> Tuple[torch.Tensor, DetDataSample]:
        """One image (path, or BGR array as mmcv reads it) -> ``(1, 3, H, W)`` normalised
        input and its data sample (``img_shape``, ``scale_factor``, ``ori_shape``)."""
        # mmdet's InferencerLoader reads a path, or takes an array as it is
        packed = self.pipeline(image if isinstance(image, np.ndarray) else str(image))
        data = self.preprocessor(
            dict(inputs=[packed['inputs']], data_samples=[packed['data_samples']]), False
        )
        return data['inputs'], data['data_samples'][0]

    def run(self, inputs: Union[torch.Tensor, np.ndarray]) -> Tuple[np.ndarray, ...]:
        """The graph on a normalised batch ``(bs, 3, H, W)``: boxes ``(bs, k, 4)`` in input
        pixels, scores ``(bs, k)``, labels ``(bs, k)``."""
        array = inputs.numpy() if isinstance(inputs, torch.Tensor) else inputs
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 4 or array.shape[1] != 3:
            raise ValueError(f'expected a (batch, 3, height, width) input, got {array.shape}')
        if array.shape[0] != 1 and not self.metadata.get('dynamic_batch'):
            raise ValueError(
                f'this model was exported for one image at a time, got a batch of '
                f'{array.shape[0]}: run the images one by one, or export with '
                '--dynamic-batch'
            )
        height, width = array.shape[-2:]
        if height < self.metadata['min_height'] or width < self.metadata['min_width']:
            raise ValueError(
                f'input {height}x{width} is smaller than the exported graph '
                f'accepts ({self.metadata["min_height"]}x'
                f'{self.metadata["min_width"]}): resize the image up'
            )
        return tuple(self.session.run(None, {INPUT_NAME: array}))

    def predict(self, image: Union[str, np.ndarray]) -> DetDataSample:
        """Detect in one image: a data sample whose ``pred_instances`` (``bboxes`` xyxy in
        original-image pixels, ``scores``, ``labels``) match ``DeformDETR.predict``."""
        inputs, sample = self.preprocess(image)
        boxes, scores, labels = (torch.from_numpy(array[0]) for array in self.run(inputs))
        boxes = boxes / boxes.new_tensor(sample.scale_factor).repeat(2)
        sample.pred_instances = InstanceData(bboxes=boxes, scores=scores, labels=labels)
        return sample
