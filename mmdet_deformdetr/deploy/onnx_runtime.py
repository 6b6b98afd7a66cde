"""Run an exported DeformDETR on images (onnxruntime, OpenVINO, ...), as the PyTorch path would.

Pre-processing is the config's own: mmdet's test pipeline (resize, ...) and the model's
``DetDataPreprocessor`` (mean/std, BGR -> RGB), built from the config, with its size-divisor
padding switched off: one image goes in unpadded; a batch of images of different sizes (a file
exported with ``--dynamic-batch``) is padded to the largest, and each image's size goes in too.
Boxes come back in original-image pixels.
"""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import get_test_pipeline_cfg
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.structures import InstanceData

from .backends import create_session
from .onnx_export import INPUT_NAME, SHAPES_NAME, read_metadata


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
    """An exported model in a runtime session, with the config's pre-processing.

    Args:
        onnx_path: a file written by ``tools/deployment/export_onnx.py``.
        config: the model's config (path or ``Config``): test pipeline and data preprocessor.
        num_threads: intra-op / inference threads (None: the runtime's default, one per core).
        backend: ``'onnxruntime'`` (default), ``'openvino'`` or ``'tensorrt'`` (a GPU), see
            :mod:`mmdet_deformdetr.deploy.backends`.
        ov_precision: OpenVINO's inference precision, ``'f32'`` (default) or ``'bf16'``.
        cache_dir: OpenVINO's compiled-model cache folder (None: none).
    """

    def __init__(
        self,
        onnx_path: Union[str, Path],
        config: Union[str, Path, Config],
        num_threads: Optional[int] = None,
        backend: str = 'onnxruntime',
        ov_precision: str = 'f32',
        cache_dir: Optional[Union[str, Path]] = None,
    ) -> None:
        # first: a clear error for a file that tools/deployment/export_onnx.py did not write
        self.metadata: Dict[str, object] = read_metadata(onnx_path)
        self.backend = backend
        self.session = create_session(onnx_path, backend, num_threads, ov_precision, cache_dir)
        self.padded = SHAPES_NAME in self.session.input_names
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
        inputs, samples = self.preprocess_batch([image])
        return inputs, samples[0]

    def preprocess_batch(
        self, images: Sequence[Union[str, np.ndarray]]
    ) -> Tuple[torch.Tensor, List[DetDataSample]]:
        """Images -> ``(bs, 3, H, W)`` normalised and padded (bottom/right, the preprocessor's
        ``pad_value``) to the largest height and width, and their data samples."""
        # mmdet's InferencerLoader reads a path, or takes an array as it is
        packed = [self.pipeline(im if isinstance(im, np.ndarray) else str(im)) for im in images]
        return self.preprocess_packed(packed)

    def preprocess_packed(self, packed: Sequence[dict]) -> Tuple[torch.Tensor, List[DetDataSample]]:
        """Items of the config's test pipeline (``inputs``, ``data_samples``, as a dataset
        yields them) -> normalised padded batch and data samples, as :meth:`preprocess_batch`."""
        data = self.preprocessor(
            dict(
                inputs=[item['inputs'] for item in packed],
                data_samples=[item['data_samples'] for item in packed],
            ),
            False,
        )
        return data['inputs'], data['data_samples']

    def run(
        self,
        inputs: Union[torch.Tensor, np.ndarray],
        img_shapes: Optional[Union[torch.Tensor, np.ndarray]] = None,
    ) -> Tuple[np.ndarray, ...]:
        """The graph on a normalised batch ``(bs, 3, H, W)``: boxes ``(bs, k, 4)`` in pixels of
        each image, scores ``(bs, k)``, labels ``(bs, k)``.

        ``img_shapes``: ``(bs, 2)``, each image's ``(h, w)`` inside a padded batch (files
        exported with ``--dynamic-batch``; None: every image fills the input)."""
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
        feeds = {INPUT_NAME: array}
        if img_shapes is not None and not self.padded:
            raise ValueError(
                'this model was exported without padding masks: export it with '
                '--dynamic-batch to run padded batches'
            )
        if self.padded:
            if img_shapes is None:
                img_shapes = np.array([[height, width]] * array.shape[0])
            shapes = np.asarray(img_shapes, dtype=np.int64).reshape(array.shape[0], 2)
            if (shapes < 1).any() or (shapes > [height, width]).any():
                raise ValueError(f'img_shapes {shapes.tolist()} do not fit in {height}x{width}')
            feeds[SHAPES_NAME] = shapes
        return self.session.run(feeds)

    def predict(self, image: Union[str, np.ndarray]) -> DetDataSample:
        """Detect in one image: a data sample whose ``pred_instances`` (``bboxes`` xyxy in
        original-image pixels, ``scores``, ``labels``) match ``DeformDETR.predict``."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[Union[str, np.ndarray]]) -> List[DetDataSample]:
        """Detect in several images: one padded batch through the graph (a file exported with
        ``--dynamic-batch``; a batch of one otherwise); a data sample per image, as
        :meth:`predict`."""
        return self.detect(*self.preprocess_batch(images))

    def detect(self, inputs: torch.Tensor, samples: List[DetDataSample]) -> List[DetDataSample]:
        """The graph on a pre-processed batch (:meth:`preprocess_batch` or
        :meth:`preprocess_packed`): adds ``pred_instances`` in original-image pixels to each
        data sample and returns them."""
        img_shapes = None
        if self.padded:
            img_shapes = np.array([sample.img_shape[:2] for sample in samples])
        outputs = self.run(inputs, img_shapes)
        for row, sample in enumerate(samples):
            boxes, scores, labels = (torch.from_numpy(array[row]) for array in outputs)
            boxes = boxes / boxes.new_tensor(sample.scale_factor).repeat(2)
            sample.pred_instances = InstanceData(bboxes=boxes, scores=scores, labels=labels)
        return samples
