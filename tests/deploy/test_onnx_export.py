"""ONNX export of the three variants (tools/deployment/export_onnx.py) and onnxruntime parity with
our PyTorch predict on the photographs in tests/data/coco_photos, through mmdet's pipelines.

One export per variant (cached for the module), each a real run of the tool; the tiny model of
tests/helpers/tiny_deformdetr_coco.py with two decoder layers (so that refinement refines) and
weights moved off their zero initialisations. The plain and two-stage models are exported with a
dynamic batch (padded batches: images and img_shapes), refine for one image (the default). Each
file runs in onnxruntime and in OpenVINO (f32), with the same tolerances.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict

import numpy as np
import onnx
import pytest
import torch
from mmdet.registry import DATASETS, MODELS
from mmengine.config import Config
from mmengine.runner import load_checkpoint

from mmdet_deformdetr.deploy import OPSET, OnnxDetector
from mmdet_deformdetr.deploy.onnx_export import METADATA_KEY, SHAPES_NAME
from tests.helpers.models import VARIANTS
from tests.helpers.tools import TINY_CONFIG, VARIANT_OPTIONS, run_tool, save_tiny_checkpoint

# docs/deployment.md's claims: same labels, scores within 1e-4, boxes within 0.01 px
SCORE_TOL = 1e-4
BOX_TOL = 0.01
DECODER_LAYERS = 2
# exported with --dynamic-batch (padded batches); the others for one image
DYNAMIC_BATCH = ('plain', 'two_stage')
# an image inside a padded batch against the same image alone, through one graph: float32
# rounding of a batch against one image (other convolution blockings, the image-only GroupNorm)
# on the tiny model, whose boxes are about 100 px
ALONE_BOX_TOL = 1e-3
ALONE_SCORE_TOL = 1e-5

pytestmark = pytest.mark.slow


_EXPORTS: Dict[str, SimpleNamespace] = {}


def export_variant(variant: str, tmp_path_factory) -> SimpleNamespace:
    """The variant's checkpoint, its ONNX file (written by the tool, once per test session) and
    the PyTorch model loaded from the same checkpoint."""
    if variant in _EXPORTS:
        return _EXPORTS[variant]
    folder = tmp_path_factory.mktemp(f'onnx_{variant}')
    onnx_path = folder / 'tiny.onnx'
    # a config file per variant, as a user has one (tools/infer.py takes no --cfg-options)
    config = folder / f'tiny_{variant}.py'
    config.write_text(
        f'_base_ = {str(TINY_CONFIG)!r}\nmodel = dict(**{VARIANTS[variant]!r}, '
        f'transformer=dict(num_decoder_layers={DECODER_LAYERS}))\n'
    )
    checkpoint = save_tiny_checkpoint(folder / 'tiny.pth', variant, config=config)
    result = run_tool(
        [
            sys.executable,
            'tools/deployment/export_onnx.py',
            str(config),
            str(checkpoint),
            '--out',
            str(onnx_path),
            '--example-size',
            '96',
            '128',
            '--no-check',
            *(['--dynamic-batch'] if variant in DYNAMIC_BATCH else []),
        ],
        timeout=1200,
    )
    cfg = Config.fromfile(str(config))
    model = MODELS.build(cfg.model)
    load_checkpoint(model, str(checkpoint), map_location='cpu', logger='silent')
    _EXPORTS[variant] = SimpleNamespace(
        variant=variant,
        checkpoint=checkpoint,
        onnx=onnx_path,
        config=config,
        cfg=cfg,
        model=model.eval(),
        output=result.output,
    )
    return _EXPORTS[variant]


@pytest.fixture(scope='module', params=list(VARIANT_OPTIONS))
def exported(request, tmp_path_factory) -> SimpleNamespace:
    return export_variant(request.param, tmp_path_factory)


def photo_dataset(cfg: Config, coco_photos: Path):
    """The config's test dataset over the six photographs (mmdet's CocoDataset and pipeline)."""
    dataset_cfg = cfg.test_dataloader.dataset.copy()
    dataset_cfg.update(data_root=f'{coco_photos}/', indices=None)
    return DATASETS.build(dataset_cfg)


def test_graph_is_standard_onnx_with_symbolic_sizes(exported):
    model = onnx.load(str(exported.onnx))
    onnx.checker.check_model(model, full_check=True)
    assert {op.domain: op.version for op in model.opset_import}[''] == OPSET
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dynamic_batch = exported.variant in DYNAMIC_BATCH
    assert [bool(d.dim_param) for d in dims] == [dynamic_batch, False, True, True]  # bs, 3, H, W
    assert [i.name for i in model.graph.input][1:] == ([SHAPES_NAME] if dynamic_batch else [])
    assert [o.name for o in model.graph.output] == ['boxes', 'scores', 'labels']
    op_types = {node.op_type for node in model.graph.node}
    assert 'GridSample' in op_types  # the deformable attention, as a standard operator
    assert {node.domain for node in model.graph.node} <= {'', 'ai.onnx'}  # no custom op
    metadata = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert metadata['classes'][0] == 'person'
    assert metadata['as_two_stage'] == (exported.variant == 'two_stage')
    assert 'height >= 65, width >= 65' in exported.output


@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
def test_runtime_matches_pytorch_predict_on_photos(exported, coco_photos, backend):
    """Every photograph at its test-pipeline size (several shapes, one file): same labels,
    scores within 1e-4, boxes within 0.01 px of DeformDETR.predict (C++ kernel path), in
    onnxruntime and in OpenVINO (f32 inference precision)."""
    detector = OnnxDetector(exported.onnx, exported.cfg, num_threads=1, backend=backend)
    dataset = photo_dataset(exported.cfg, coco_photos)
    shapes, score_diffs, box_diffs = set(), [], []
    for index in range(len(dataset)):
        item = dataset[index]
        with torch.no_grad():
            expected = exported.model.test_step(
                dict(inputs=[item['inputs']], data_samples=[item['data_samples']])
            )[0]
        got = detector.predict(item['data_samples'].img_path)
        assert got.img_shape == expected.img_shape
        shapes.add(got.img_shape)
        want, have = expected.pred_instances, got.pred_instances
        assert torch.equal(have.labels, want.labels), item['data_samples'].img_path
        score_diffs.append(float((have.scores - want.scores).abs().max()))
        box_diffs.append(float((have.bboxes - want.bboxes).abs().max()))
    print(
        f'{backend} {exported.variant}: shapes {sorted(shapes)}, max |score diff| '
        f'{max(score_diffs):.2e}, max |box diff| {max(box_diffs):.2e} px'
    )
    assert max(score_diffs) <= SCORE_TOL and max(box_diffs) <= BOX_TOL
    assert len(shapes) >= 2, shapes


def test_batch_axis(tmp_path_factory, coco_photos):
    """Exported with --dynamic-batch: two images of one size in one batch give what each gives
    alone; a model exported for one image refuses a batch, saying what to do."""
    detector = OnnxDetector(
        export_variant('plain', tmp_path_factory).onnx,
        export_variant('plain', tmp_path_factory).cfg,
        num_threads=1,
    )
    image = sorted((coco_photos / 'images').glob('*.jpg'))[0]
    inputs, _ = detector.preprocess(str(image))
    batch = torch.cat([inputs, inputs.flip(-1)])
    together = detector.run(batch)
    for row in range(2):
        alone = detector.run(batch[row : row + 1])
        for joint, single in zip(together, alone):
            np.testing.assert_allclose(joint[row], single[0], atol=1e-4, rtol=0)
    refine = export_variant('refine', tmp_path_factory)
    with pytest.raises(ValueError, match='one image at a time.*--dynamic-batch'):
        OnnxDetector(refine.onnx, refine.cfg, num_threads=1).run(batch)


@pytest.mark.parametrize('variant', DYNAMIC_BATCH)
@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
def test_padded_batch_of_different_sizes(tmp_path_factory, coco_photos, backend, variant):
    """The six photographs (several sizes) in one padded batch through a --dynamic-batch file:
    each image gets what the same graph gives it alone, to float32 rounding (the padding is kept
    out in the graph, models/padding.py), and what DeformDETR.test_step gives on the same padded
    batch (same tolerances as one image)."""
    exported = export_variant(variant, tmp_path_factory)
    detector = OnnxDetector(exported.onnx, exported.cfg, num_threads=1, backend=backend)
    dataset = photo_dataset(exported.cfg, coco_photos)
    items = [dataset[index] for index in range(len(dataset))]
    assert len({item['data_samples'].img_shape for item in items}) >= 3
    batch = dict(
        inputs=[item['inputs'] for item in items],
        data_samples=[item['data_samples'] for item in items],
    )
    with torch.no_grad():
        expected = exported.model.test_step(batch)
    inputs, samples = detector.preprocess_packed(items)
    assert expected[0].batch_input_shape == tuple(inputs.shape[-2:])
    got = detector.detect(inputs, samples)
    moved_box, moved_score = 0.0, 0.0
    for index, (want, have) in enumerate(zip(expected, got)):
        alone = detector.detect(*detector.preprocess_packed(items[index : index + 1]))[0]
        want, have, alone = want.pred_instances, have.pred_instances, alone.pred_instances
        assert torch.equal(have.labels, want.labels) and torch.equal(have.labels, alone.labels)
        assert float((have.scores - want.scores).abs().max()) <= SCORE_TOL
        assert float((have.bboxes - want.bboxes).abs().max()) <= BOX_TOL
        moved_box = max(moved_box, float((have.bboxes - alone.bboxes).abs().max()))
        moved_score = max(moved_score, float((have.scores - alone.scores).abs().max()))
    print(
        f'{backend} {variant}: padded batch vs alone through the graph: max |box| '
        f'{moved_box:.3g} px, score {moved_score:.3g}'
    )
    assert moved_box <= ALONE_BOX_TOL and moved_score <= ALONE_SCORE_TOL


def test_too_small_input_is_refused(exported):
    detector = OnnxDetector(exported.onnx, exported.cfg, num_threads=1)
    with pytest.raises(ValueError, match='smaller than the exported graph accepts'):
        detector.run(np.zeros((1, 3, 32, 128), np.float32))


def test_onnx_infer_draws_like_infer_py(tmp_path_factory, coco_photos, tmp_path):
    """tools/deployment/onnx_infer.py and tools/infer.py (DetInferencer, PyTorch) on the same
    photograph and checkpoint: the same predictions and the same picture."""
    import mmcv

    two_stage = export_variant('two_stage', tmp_path_factory)
    image = sorted((coco_photos / 'images').glob('*.jpg'))[1]
    common = ['--pred-score-thr', '0', '--save-pred']
    run_tool(
        [
            sys.executable,
            'tools/deployment/onnx_infer.py',
            str(image),
            str(two_stage.config),
            str(two_stage.onnx),
            '--out-dir',
            str(tmp_path / 'onnx'),
            '--threads',
            '1',
            *common,
        ]
    )
    run_tool(
        [
            sys.executable,
            'tools/infer.py',
            str(image),
            str(two_stage.config),
            str(two_stage.checkpoint),
            '--out-dir',
            str(tmp_path / 'torch'),
            '--device',
            'cpu',
            *common,
        ]
    )
    ours, theirs = (
        json.loads((tmp_path / side / 'preds' / f'{image.stem}.json').read_text())
        for side in ('onnx', 'torch')
    )
    assert ours['labels'] == theirs['labels'] and len(ours['labels']) == 10
    np.testing.assert_allclose(ours['scores'], theirs['scores'], atol=SCORE_TOL, rtol=0)
    np.testing.assert_allclose(ours['bboxes'], theirs['bboxes'], atol=BOX_TOL, rtol=0)
    photo = mmcv.imread(str(image)).astype(np.int16)
    drawn, reference = (
        mmcv.imread(str(tmp_path / side / 'vis' / image.name)).astype(np.int16)
        for side in ('onnx', 'torch')
    )
    assert drawn.shape == photo.shape
    assert (np.abs(drawn - photo) > 60).mean() > 0.005  # boxes and labels were drawn
    assert (np.abs(drawn - reference) > 60).mean() < 0.0005  # as the PyTorch path draws them
