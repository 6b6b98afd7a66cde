"""tools/train.py, tools/test.py and tools/infer.py on one process, plus mmdet's own shipped
tools/test.py and DetInferencer with our config (the plugin works with mmdet's tools unchanged)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.tools import TINY_CONFIG, coco_photo_options, run_tool

MMDET_TEST_PY = Path(__import__('mmdet').__file__).parent / '.mim' / 'tools' / 'test.py'
# each test runs a tool as a process (or mmdet's inferencer): the whole suite's; the fast tier
# covers the tools' argument parsing (test_tool_args.py)
pytestmark = pytest.mark.slow


def test_train_amp_auto_scale_lr_then_resume(python_tool, tiny_data_options, tmp_path):
    """--amp picks CPU bf16 autocast, and warns loudly where bf16 is not native (forced here
    with ATEN_CPU_CAPABILITY=avx2, as on an AVX2-only CPU); --auto-scale-lr scales by 1 image /
    32; --resume (auto) continues from iter_2.pth in the work dir (mmengine's resume through our
    safe loader)."""
    common = [str(TINY_CONFIG), '--work-dir', str(tmp_path)]
    first = python_tool(
        'tools/train.py',
        *common,
        '--amp',
        '--auto-scale-lr',
        '--cfg-options',
        *tiny_data_options,
        env=dict(ATEN_CPU_CAPABILITY='avx2'),
    )
    assert "type='CPUAutocastOptimWrapper'" in first.output
    assert (
        'WARNING - --amp / CPUAutocastOptimWrapper: bf16 autocast will be much SLOWER than '
        'float32 on this CPU'
    ) in first.output
    assert 'Scaling the original LR by 0.03125' in first.output  # 1 image / base batch 32
    assert (tmp_path / 'iter_2.pth').is_file()

    second = python_tool(
        'tools/train.py',
        *common,
        '--resume',
        '--cfg-options',
        'train_cfg.max_iters=3',
        *tiny_data_options,
    )
    assert 'Auto resumed from the latest checkpoint' in second.output
    assert 'resumed epoch: 0, iter: 2' in second.output
    assert 'Iter(train) [3/3]' in second.output
    resumed = torch.load(tmp_path / 'iter_3.pth', map_location='cpu', weights_only=False)
    assert resumed['meta']['iter'] == 3


def test_test_py_metrics_dump_and_drawings(
    python_tool, tiny_data_options, tiny_checkpoint, tmp_path
):
    predictions = tmp_path / 'predictions.pkl'
    python_tool(
        'tools/test.py',
        str(TINY_CONFIG),
        str(tiny_checkpoint),
        '--work-dir',
        str(tmp_path),
        '--out',
        str(predictions),
        '--show-dir',
        'vis',
        '--cfg-options',
        *tiny_data_options,
    )
    assert predictions.is_file()
    metric_files = list(tmp_path.glob('*/*.json'))  # <timestamp>/<timestamp>.json
    assert len(metric_files) == 1
    metrics = json.loads(metric_files[0].read_text())
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    assert len(list(tmp_path.glob('*/vis/*.jpg'))) == 4  # one drawing per test image


@pytest.mark.parametrize('tool', ['test', 'infer'])
def test_checkpoint_of_another_class_count_is_refused(tool, coco_photos, tiny_checkpoint, tmp_path):
    """The tiny checkpoint has 80-class heads; a 3-class model would be tested (or draw) with
    randomly initialised heads: an error naming num_classes, not a plausible mAP."""
    options = ['--cfg-options', 'model.bbox_head.num_classes=3']
    if tool == 'test':
        command = [
            'tools/test.py',
            str(TINY_CONFIG),
            str(tiny_checkpoint),
            '--work-dir',
            str(tmp_path),
            *options,
            *coco_photo_options(coco_photos),
        ]
    else:
        image = sorted((coco_photos / 'images').glob('*.jpg'))[0]
        command = [
            'tools/infer.py',
            str(image),
            str(TINY_CONFIG),
            str(tiny_checkpoint),
            '--out-dir',
            str(tmp_path),
            '--device',
            'cpu',
        ]
        # DetInferencer has no --cfg-options: a 3-class copy of the config
        config = tmp_path / 'three_classes.py'
        config.write_text(
            f'_base_ = {str(TINY_CONFIG)!r}\nmodel = dict(bbox_head=dict(num_classes=3))\n'
        )
        command[2] = str(config)
    result = run_tool([sys.executable, *command], check=False)
    assert result.returncode != 0
    assert 'num_classes' in result.output and 'random' in result.output
    assert 'Traceback' not in result.output
    assert 'coco/bbox_mAP' not in result.output


def test_mmdet_shipped_test_py_runs_our_config(
    python_tool, tiny_data_options, tiny_checkpoint, tmp_path
):
    """mmdet's own tools/test.py, unchanged: custom_imports in our config loads the plugin."""
    if not MMDET_TEST_PY.is_file():
        pytest.skip(f'{MMDET_TEST_PY} is not shipped with this mmdet')
    result = python_tool(
        str(MMDET_TEST_PY),
        str(TINY_CONFIG),
        str(tiny_checkpoint),
        '--work-dir',
        str(tmp_path),
        '--cfg-options',
        *tiny_data_options,
    )
    assert 'Load checkpoint from' in result.output
    assert 'coco/bbox_mAP:' in result.output


def test_infer_py_draws_detections(python_tool, coco_photos, tiny_checkpoint, tmp_path):
    image = sorted((coco_photos / 'images').glob('*.jpg'))[0]
    python_tool(
        'tools/infer.py',
        str(image),
        str(TINY_CONFIG),
        str(tiny_checkpoint),
        '--out-dir',
        str(tmp_path),
        '--device',
        'cpu',
        '--pred-score-thr',
        '0',
        '--save-pred',
    )
    assert (tmp_path / 'vis' / image.name).is_file()
    predictions = json.loads((tmp_path / 'preds' / f'{image.stem}.json').read_text())
    assert len(predictions['scores']) == 10  # test_cfg.max_per_img of the tiny config


def test_det_inferencer_with_our_config(coco_photos, tiny_checkpoint):
    from mmdet.apis import DetInferencer

    import mmdet_deformdetr  # noqa: F401

    image = sorted((coco_photos / 'images').glob('*.jpg'))[0]
    inferencer = DetInferencer(
        model=str(TINY_CONFIG), weights=str(tiny_checkpoint), device='cpu', show_progress=False
    )
    assert type(inferencer.model).__name__ == 'DeformDETR'
    assert inferencer.model.dataset_meta['classes'][0] == 'person'  # from the checkpoint
    result = inferencer(str(image), return_datasamples=True)
    instances = result['predictions'][0].pred_instances
    assert len(instances) == 10
    assert instances.bboxes.shape == (10, 4)
    height, width = result['predictions'][0].ori_shape
    # boxes are in the original image's pixels
    assert float(instances.bboxes[:, 2].max()) <= width + 1
    assert float(instances.bboxes[:, 3].max()) <= height + 1
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()
