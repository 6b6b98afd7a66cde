"""tools/deployment/verify_deploy.py on a small COCO-format val set drawn by the package's
synthetic shapes generator, with the tiny model (five classes): a file exported from the same
weights passes on onnxruntime and OpenVINO; a file exported from other weights, and a corrupted
file, fail with a clear message and a non-zero exit status."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

from mmdet_deformdetr.datasets.synthetic_shapes import (
    CLASSES,
    ShapesConfig,
    generate_shapes_dataset,
)
from mmdet_deformdetr.deploy import export_onnx
from tests.helpers.tools import TINY_CONFIG, run_tool, save_tiny_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def deployed(tmp_path_factory) -> SimpleNamespace:
    """Shapes val set (4 images), a five-class tiny config over it, a checkpoint, its ONNX file,
    and a checkpoint of other (unperturbed) weights."""
    folder = tmp_path_factory.mktemp('verify')
    data = generate_shapes_dataset(
        folder / 'shapes', ShapesConfig(num_train=1, num_val=4, img_size=128), workers=1
    )
    ann_file = data / 'annotations' / 'instances_val.json'
    config = folder / 'tiny_shapes.py'
    config.write_text(
        f'_base_ = {str(TINY_CONFIG)!r}\n'
        f'classes = {CLASSES!r}\n'
        'model = dict(bbox_head=dict(num_classes=len(classes)), '
        'transformer=dict(num_decoder_layers=2))\n'
        f'val_dataloader = dict(dataset=dict(data_root={str(data) + "/"!r}, '
        "ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'), "
        'metainfo=dict(classes=classes), indices=None))\n'
        f'val_evaluator = dict(ann_file={str(ann_file)!r})\n'
        'test_dataloader = val_dataloader\n'
        'test_evaluator = val_evaluator\n'
    )
    checkpoint = save_tiny_checkpoint(folder / 'tiny.pth', config=config)
    other = save_tiny_checkpoint(folder / 'other.pth', perturb=False, config=config)
    cfg = Config.fromfile(str(config))
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    load_checkpoint(model, str(checkpoint), map_location='cpu', logger='silent')
    onnx_file = folder / 'tiny.onnx'
    export_onnx(model.eval(), onnx_file, example_hw=(96, 96))
    return SimpleNamespace(config=config, checkpoint=checkpoint, other=other, onnx=onnx_file)


def verify(deployed: SimpleNamespace, checkpoint: Path, onnx_file: Path, *extra: str):
    return run_tool(
        [
            sys.executable,
            'tools/deployment/verify_deploy.py',
            str(deployed.config),
            str(checkpoint),
            str(onnx_file),
            '--threads',
            '1',
            *extra,
        ],
        check=False,
    )


def test_same_weights_pass_on_both_backends(deployed):
    result = verify(deployed, deployed.checkpoint, deployed.onnx)
    assert result.returncode == 0, result.output[-3000:]
    assert '4 images of' in result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if ' ms ' in line}
    assert {'pytorch', 'onnxruntime', 'openvino'} <= set(rows), result.output
    assert rows['onnxruntime'].rstrip().endswith('ok')
    assert rows['openvino'].rstrip().endswith('ok')
    assert 'all backends within tolerances' in result.output


def test_pytorch_bf16_row_is_judged_on_map_only(deployed):
    result = verify(
        deployed, deployed.checkpoint, deployed.onnx, '--backends', 'onnxruntime', '--pytorch-bf16'
    )
    rows = [line for line in result.output.splitlines() if line.startswith('pytorch bf16 ')]
    assert len(rows) == 1, result.output[-3000:]
    # bf16 moves scores beyond the float32 tolerance of 1e-3, which does not fail it
    assert float(rows[0].split()[5]) > 1e-3 and rows[0].rstrip().endswith('ok'), rows[0]
    assert result.returncode == 0, result.output[-3000:]


def test_other_weights_fail_with_the_differences_named(deployed):
    result = verify(deployed, deployed.other, deployed.onnx, '--backends', 'onnxruntime')
    assert result.returncode == 1, result.output[-3000:]
    assert 'FAIL onnxruntime' in result.output and 'max |score diff|' in result.output
    assert 'FAILED: onnxruntime' in result.output


def test_tolerance_from_the_command_line(deployed):
    """A tolerance of zero on scores fails a file that the defaults accept (float noise)."""
    result = verify(
        deployed, deployed.checkpoint, deployed.onnx, '--backends', 'openvino', '--tol-score', '0'
    )
    assert result.returncode == 1, result.output[-3000:]
    assert 'max |score diff|' in result.output and '> 0.0' in result.output


def test_corrupted_file_is_refused(deployed, tmp_path):
    broken = tmp_path / 'broken.onnx'
    broken.write_bytes(deployed.onnx.read_bytes()[:4096])
    result = verify(deployed, deployed.checkpoint, broken, '--backends', 'onnxruntime')
    assert result.returncode == 2, result.output[-3000:]
    assert f'{broken}: cannot be run by onnxruntime' in result.output
    assert 'Traceback' not in result.output


def test_differences_match_near_tied_scores_by_position():
    """differences(): scores by rank; a near-tie that trades ranks is matched by position, not
    reported as the distance between two objects; a label change and a detection without a
    partner in the score window count."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from mmdet_deformdetr.deploy.verify import differences

    def sample(boxes, scores, labels):
        result = DetDataSample()
        result.pred_instances = InstanceData(
            bboxes=torch.tensor(boxes, dtype=torch.float32),
            scores=torch.tensor(scores),
            labels=torch.tensor(labels),
        )
        return result

    # ranks 2 and 3 swap (scores 1e-5 apart): the same detections, 0.5 px apart at most
    want = sample([[0, 0, 10, 10], [50, 50, 60, 60], [5, 5, 8, 9]], [0.9, 0.30001, 0.3], [1, 2, 3])
    have = sample(
        [[0, 0, 10, 10.5], [5, 5, 8, 9], [50, 50, 60, 60]], [0.9, 0.30002, 0.3], [1, 3, 2]
    )
    box, score, agreement = differences([want], [have], score_window=1e-3)
    assert box == 0.5 and score == pytest.approx(1e-5, abs=1e-7) and agreement == 1.0
    # one label changes; one score leaves the window (no partner: an infinite box difference)
    have = sample([[0, 0, 10, 10], [5, 5, 8, 9], [50, 50, 60, 60]], [0.8, 0.30001, 0.3], [1, 3, 4])
    box, score, agreement = differences([want], [have], score_window=1e-3)
    assert box == float('inf') and score == pytest.approx(0.1) and agreement == pytest.approx(1 / 3)
